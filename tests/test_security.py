"""Loading a saved retriever never runs code or unpickles: one crafted directory per attack is refused by
our own checks with a clear error, and no marker file the payload would write appears."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from icl_fungi import ICLRetriever
from icl_fungi.features.models import check_model_folder

from .helpers import read_manifest, rewrite_manifest

MARKER = "PWNED"


@pytest.fixture(scope="module")
def saved(tmp_path_factory, intent_pool) -> Path:
    """A retriever built with the default model *name*, so the manifest names a model."""
    texts, labels = intent_pool
    r = ICLRetriever.from_texts(texts[:40], labels[:40], features=("embedding", "kl"), show_progress_bar=False)
    return r.save(tmp_path_factory.mktemp("s") / "r")


def _copy(saved: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "r"
    shutil.copytree(saved, dst)
    return dst


def _marker_absent(root: Path) -> None:
    assert not list(root.rglob(MARKER)) and not Path(MARKER).exists()


def _evil_module_folder(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nclass EvilModule:\n    pass\n")
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "evil.EvilModule"}]))
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return folder


def test_custom_module_class_in_the_saved_directory(saved, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _copy(saved, tmp_path)
    _evil_module_folder(path / "evil_model", tmp_path / MARKER)
    rewrite_manifest(path, lambda m: m.update(model="evil_model"), rehash=True)  # the planted folder listed with its true hashes
    with pytest.raises(ValueError, match="names the local model path 'evil_model'"):
        ICLRetriever.load(path)
    with pytest.raises(ValueError, match=r"module class 'evil\.EvilModule'"):  # even when the caller names it
        ICLRetriever.load(path, model=str(path / "evil_model"))
    _marker_absent(tmp_path)


def test_auto_map_modeling_code_is_refused(tmp_path):
    folder = tmp_path / "auto"
    folder.mkdir()
    (folder / "modeling_evil.py").write_text(f"open({str(tmp_path / MARKER)!r}, 'w').write('x')\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "auto_map": {"AutoModel": "modeling_evil.Evil"}}))
    with pytest.raises(ValueError, match="auto_map"):
        check_model_folder(folder)
    from icl_fungi import FungiEncoder

    with pytest.raises(ValueError, match="auto_map"):
        FungiEncoder(str(folder))
    _marker_absent(tmp_path)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('x')",))


def test_pickled_bin_weights_are_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(tmp_path / MARKER)))
    with pytest.raises(ValueError, match=r"only pickled weights \(pytorch_model\.bin\)"):
        check_model_folder(folder)
    from icl_fungi import FungiEncoder

    with pytest.raises(ValueError, match="allow_pickle_weights=True"):
        FungiEncoder(str(folder))
    _marker_absent(tmp_path)


@pytest.mark.parametrize("entry", ["../../../../../../etc/passwd", "/etc/passwd", "encoder/../../outside.npy", "..", "a\\b"])
def test_manifest_entries_outside_the_directory(saved, tmp_path, entry, monkeypatch):
    path = _copy(saved, tmp_path)
    rewrite_manifest(path, lambda m: m["files"].update({entry: "0" * 64}))
    opened = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: opened.append(str(self)) or real_open(self, *a, **k))
    with pytest.raises(ValueError, match="not a plain"):
        ICLRetriever.load(path)
    assert not any(p.endswith(("passwd", "outside.npy")) for p in opened)  # refused before anything was opened or hashed


def test_symlinked_array_file(saved, tmp_path):
    path = _copy(saved, tmp_path)
    target = path / "encoder" / "kl_head" / "rows.npy"
    outside = tmp_path / "rows.npy"
    shutil.move(target, outside)
    os.symlink(outside, target)  # same bytes, same hash: only the link is wrong
    with pytest.raises(ValueError, match="symbolic link"):
        ICLRetriever.load(path)


@pytest.mark.parametrize(("part", "edit"), [
    ("encoder/config.json", lambda c: c["feature_config"].update(kl_temperature=0.5)),
    ("encoder/config.json", lambda c: c["feature_config"].update(seed=3)),
    ("combiner/config.json", lambda c: c["weights"].update(kl=2.0)),
    ("pca/config.json", lambda c: c.update(whiten=True)),
])
def test_edited_configuration_is_a_clear_error(saved, tmp_path, part, edit):
    path = _copy(saved, tmp_path)
    cfg = json.loads((path / part).read_text())
    edit(cfg)
    (path / part).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"{part} is corrupt or truncated"):
        ICLRetriever.load(path)
    # an attacker who also rewrites the hashes still meets the consistency checks where values must agree
    rewrite_manifest(path, rehash=True)
    if part == "encoder/config.json":
        with pytest.raises(ValueError, match="does not match"):
            ICLRetriever.load(path)


def test_edited_or_truncated_manifest(saved, tmp_path, capsys):
    path = _copy(saved, tmp_path)
    m = read_manifest(path)
    del m["n_examples"]
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="was edited or is corrupt"):
        ICLRetriever.load(path)
    rewrite_manifest(path)  # the checksum fixed: the check behind it speaks
    with pytest.raises(ValueError, match="n_examples must be a positive int"):
        ICLRetriever.load(path)
    from icl_fungi.cli import main

    assert main(["-q", "query", str(path), "card"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("icl-fungi: error:") and "Traceback" not in err and err.count("\n") == 1


def _npy_dtype(path: Path) -> np.dtype:
    """The dtype an .npy file declares in its header (read without loading the data)."""
    with path.open("rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read(fh)[2]


def test_saved_arrays_are_plain_numbers_and_strings(saved):
    """What save writes: every array a numeric or string .npy (an object array would need pickle to load)."""
    found = sorted(saved.rglob("*.npy"))
    assert len(found) >= 4, found  # the KL head, the projection, the combiner's means, PCA and the index all hold arrays
    for f in found:
        dtype = _npy_dtype(f)
        assert dtype.kind in "fiubU" and not dtype.hasobject, (f, dtype)


def test_a_pickled_array_is_refused_without_running_it(saved, tmp_path, monkeypatch):
    """Every array file replaced in turn by a pickled object (its hash listed, the checksum fixed): the load
    fails with a clear error and the payload never runs."""
    monkeypatch.chdir(tmp_path)
    names = sorted(f.relative_to(saved).as_posix() for f in saved.rglob("*.npy"))
    assert names
    for name in names:
        path = tmp_path / name.replace("/", "_")
        shutil.copytree(saved, path)
        np.save(path / name, np.array([_Payload(tmp_path / MARKER)], dtype=object), allow_pickle=True)
        rewrite_manifest(path, rehash=True)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            ICLRetriever.load(path)
        _marker_absent(tmp_path)


@pytest.mark.parametrize(
    "old, new",
    [
        (b"{", b"z"),  # numpy's ast parse fails, then its tokenize fallback raises TokenError (the CI case)
        (b"}", b"{"),  # unbalanced braces
        (b"'shape': (", b"'shape': " + b"(" * 9),  # deep nesting
        (b"'<f8'", b"'|O8'"),  # an object dtype: would need pickle
        (b"(7,)", b"(9999999999999,)"),  # a shape the file cannot hold
    ],
)
def test_a_damaged_npy_header_is_a_value_error_naming_the_file(tmp_path, old, new):
    """Header bytes numpy's parser chokes on, or that ask for something unsafe: a ValueError naming the file."""
    from icl_fungi.parts import read_array

    buffer = io.BytesIO()
    np.save(buffer, np.arange(7, dtype=np.float64))
    data = buffer.getvalue()
    assert old in data
    path = tmp_path / "damaged.npy"
    path.write_bytes(data.replace(old, new, 1))
    with pytest.raises(ValueError, match=r"damaged\.npy"):
        read_array(path)
