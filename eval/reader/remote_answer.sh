#!/usr/bin/env bash
# Answer exported prompt files on another machine (e.g. a GPU box without network access) with the in-process reader.
#
#   bash eval/reader/remote_answer.sh MODEL.gguf TOKENIZER_DIR OUT_DIR BATCH FILE1.jsonl.xz[,FILE2.jsonl.xz,...]
#
# TOKENIZER_DIR: a tokenizer folder saved by a transformers version whose GGUF tokenizer passes the reader's check
# (older versions rebuild Gemma 3's wrong, and the reader refuses them), or "-" for the model's own. The files are
# answered in the order given into OUT_DIR/<file>.cache.jsonl; OUT_DIR/summary.json names the reader's endpoint id.
# Copy the caches back and draw the reports with
# `icl-fungi eval ... --reader transformers --cached-only --cache CACHE --endpoint-id ID`.
set -euo pipefail
model=$1; tokenizer=$2; out=$3; batch=$4; files=$5
tok_args=()
if [ "$tokenizer" != "-" ]; then tok_args=(--reader-tokenizer "$tokenizer"); fi
python3 eval/reader/answer_prompts.py --prompts "$files" --reader-model "$model" "${tok_args[@]}" --device cuda \
  --batch-size "$batch" --out-dir "$out"
