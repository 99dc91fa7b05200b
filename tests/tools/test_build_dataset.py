"""tools/build_dataset.py on synthetic images: review, duplicates, split, manifest, refusal.

No network and no apt: packages are fake unpacked trees built in tmp_path.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tool_modules import load_tool

bd = load_tool("build_dataset")

COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: test-wallpapers

Files: *
Copyright: 2020 Someone
License: GPL-2+

Files: 20.04/b.png
Copyright: 2021, Somebody Else
License: CC0-1.0

Files: debian/*
 AUTHORS
Copyright: 2022 Packager
License: Expat
"""


def photo(seed: int, size: tuple[int, int] = (1200, 800)) -> Image.Image:
    """A smooth random colour field with fine noise: a stand-in for a photograph."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    im = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    noise = rng.normal(0, 4, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(im) + noise, 0, 255).astype(np.uint8))


def make_package(root: Path, name: str = "test-wallpapers") -> bd.PackageSource:
    pkg = root / name
    bg = pkg / "usr/share/backgrounds"
    bg.mkdir(parents=True)
    a = photo(1, (800, 600))
    a.save(bg / "a.jpg", quality=92)
    a.resize((200, 150), Image.Resampling.LANCZOS).save(bg / "a_small.jpg", quality=75)
    photo(2, (640, 480)).save(bg / "b.png")
    photo(3, (480, 640)).save(bg / "c.jpg", quality=90)
    Image.new("RGB", (320, 240), (20, 120, 200)).save(bg / "logo.png")
    (bg / "a_link.jpg").symlink_to("a.jpg")
    doc = pkg / "usr/share/doc" / name
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(COPYRIGHT)
    return bd.PackageSource(name=name, version="1.0-1", root=pkg)


EXCLUDED = {("test-wallpapers", "usr/share/backgrounds/logo.png"): "logo"}
SMALL = bd.Params(
    short_side=128, val_fraction=0.34, min_val=1, min_source_short_side=128, max_mib=5.0
)


def fingerprint_of(im: Image.Image) -> tuple[tuple[int, int], np.ndarray]:
    return im.size, bd.fingerprint(im)


def test_one_picture_at_two_resolutions_is_one_group(tmp_path: Path) -> None:
    big = photo(7, (1600, 1000))
    small_path = tmp_path / "small.jpg"
    big.resize((400, 250), Image.Resampling.LANCZOS).save(small_path, quality=70)
    other = photo(8, (1600, 1000))
    items = [fingerprint_of(big), fingerprint_of(bd.open_rgb(small_path)), fingerprint_of(other)]
    assert bd.same_picture(items[0], items[1])
    assert not bd.same_picture(items[0], items[2])
    assert bd.group_duplicates(items) == [[0, 1], [2]]


def test_same_content_other_aspect_is_another_picture() -> None:
    im = photo(9, (1600, 1000))
    crop = im.crop((0, 0, 1000, 1000))
    assert not bd.same_picture(fingerprint_of(im), fingerprint_of(crop))


def test_split_is_deterministic_disjoint_and_sized() -> None:
    idents = [f"pkg/usr/share/backgrounds/{i}.jpg" for i in range(40)]
    first = bd.assign_splits(idents)
    again = bd.assign_splits(list(reversed(idents)))
    assert first == again
    val = {i for i, s in first.items() if s == "val"}
    train = {i for i, s in first.items() if s == "train"}
    assert val.isdisjoint(train)
    assert val | train == set(idents)
    assert len(val) == bd.n_val_for(40) == 13  # min_val 16 capped: a third at most goes to val
    assert bd.n_val_for(200) == 30  # 15 %
    assert bd.n_val_for(100) == 16  # at least 16
    # A picture's split depends on its identity only through the ranking: adding pictures can
    # only move pictures out of val, never into it from elsewhere.
    more = bd.assign_splits([*idents, "pkg/extra.jpg"])
    assert {i for i in idents if more[i] == "val"} <= val


def test_split_refuses_repeated_identities() -> None:
    with pytest.raises(bd.DatasetBuildError, match="distinct"):
        bd.assign_splits(["a", "a"])


@pytest.mark.parametrize("name", ["mate-backgrounds", " MATE-Backgrounds "])
def test_reserved_package_is_refused(name: str) -> None:
    with pytest.raises(bd.ReservedPackageError, match="reserved for independent evaluation"):
        bd.check_packages(["gnome-backgrounds", name])


def test_reserved_package_is_never_fetched(tmp_path: Path, monkeypatch, capsys) -> None:
    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"subprocess called: {args}")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    argv = ["--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]
    assert bd.main([*argv, "--packages", "sway-backgrounds", "mate-backgrounds"]) == 2
    assert "reserved for independent evaluation" in capsys.readouterr().err
    with pytest.raises(bd.ReservedPackageError):
        bd.fetch_package("mate-backgrounds", tmp_path / "cache", update=False)
    fake = bd.PackageSource("mate-backgrounds", "1", tmp_path)
    with pytest.raises(bd.ReservedPackageError):
        bd.build(tmp_path / "out", [fake], SMALL, EXCLUDED, log=lambda *_: None)
    assert not (tmp_path / "out").exists()
    assert "mate-backgrounds" not in bd.PACKAGES


def test_exclusion_table_is_keyed_by_known_packages_with_one_word_reasons() -> None:
    for (package, path), reason in bd.EXCLUDED.items():
        assert package in bd.PACKAGES
        assert not path.startswith("/")
        assert reason.isalpha()
        assert reason.islower()
    assert set(bd.REVIEWED_VERSIONS) == set(bd.PACKAGES)


def test_licence_follows_dep5_last_match() -> None:
    paras = bd.parse_copyright(COPYRIGHT)
    assert bd.licence_for(paras, "usr/share/backgrounds/b.png")["license"] == "CC0-1.0"
    # "debian/*" covers packaging files, not every installed file.
    assert bd.licence_for(paras, "usr/share/backgrounds/a.jpg")["license"] == "GPL-2+"


def test_prepare_downscales_crops_to_16_and_never_upscales() -> None:
    params = bd.Params(short_side=256)
    assert bd.prepare(photo(1, (1000, 750)), params).size == (336, 256)  # 341 -> 336
    assert bd.prepare(photo(1, (300, 200)), params).size == (288, 192)  # kept, only cropped


def build_fake(tmp_path: Path, out_name: str = "photos") -> tuple[Path, dict]:
    src = make_package(tmp_path / f"pkgs-{out_name}")
    out = tmp_path / out_name
    return out, bd.build(out, [src], SMALL, EXCLUDED, log=lambda *_: None)


def test_build_writes_reviewed_deduplicated_split_set(tmp_path: Path) -> None:
    out, manifest = build_fake(tmp_path)
    files = {Path(r["source_path"]).name: r for r in manifest["files"]}
    assert set(files) == {"a.jpg", "b.png", "c.jpg"}  # logo excluded, a_small merged into a
    assert [d["path"] for d in files["a.jpg"]["duplicates"]] == [
        "usr/share/backgrounds/a_small.jpg"
    ]
    assert manifest["excluded"] == [
        {"package": "test-wallpapers", "path": "usr/share/backgrounds/logo.png", "reason": "logo"}
    ]
    assert manifest["packages"]["test-wallpapers"]["symlinks_skipped"] == 1
    assert files["b.png"]["license"] == "CC0-1.0"
    assert files["a.jpg"]["license"] == "GPL-2+"
    assert sorted(r["split"] for r in manifest["files"]) == ["train", "train", "val"]
    for r in manifest["files"]:
        w, h = r["output_size"]
        assert min(w, h) == 128
        assert w % 16 == 0
        assert h % 16 == 0
        with Image.open(out / r["file"]) as im:
            assert im.size == (w, h)
            assert im.format == "WEBP"
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert bd.check(out) == []


def test_same_inputs_give_identical_bytes(tmp_path: Path) -> None:
    out1, _ = build_fake(tmp_path, "one")
    out2, _ = build_fake(tmp_path, "two")
    files1 = sorted(p.relative_to(out1) for p in out1.rglob("*") if p.is_file())
    files2 = sorted(p.relative_to(out2) for p in out2.rglob("*") if p.is_file())
    assert files1 == files2
    assert len(files1) == 5
    for rel in files1:
        assert (out1 / rel).read_bytes() == (out2 / rel).read_bytes(), rel


def test_check_detects_modified_missing_and_extra_files(tmp_path: Path, capsys) -> None:
    out, manifest = build_fake(tmp_path)
    assert bd.main(["--out", str(out), "--check"]) == 0
    victim = out / manifest["files"][0]["file"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    (out / "train" / "stray.png").write_bytes(b"x")
    (out / manifest["files"][1]["file"]).unlink()
    problems = bd.check(out)
    assert any("content differs" in p and manifest["files"][0]["file"] in p for p in problems)
    assert any("missing" in p for p in problems)
    assert any("stray.png: not listed" in p for p in problems)
    assert bd.main(["--out", str(out), "--check"]) == 1
    assert "content differs" in capsys.readouterr().err


def test_over_budget_fails_and_leaves_the_old_set(tmp_path: Path) -> None:
    out, _ = build_fake(tmp_path)
    before = (out / "manifest.json").read_bytes()
    src = make_package(tmp_path / "again")
    tiny = dataclasses.replace(SMALL, max_mib=0.01)
    with pytest.raises(bd.DatasetBuildError, match="budget"):
        bd.build(out, [src], tiny, EXCLUDED, log=lambda *_: None)
    assert (out / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".photos.tmp")] == []


def test_build_refuses_to_replace_a_folder_that_is_not_a_set(tmp_path: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    src = make_package(tmp_path / "pkgs")
    with pytest.raises(bd.DatasetBuildError, match="not a photo set"):
        bd.build(out, [src], SMALL, EXCLUDED, log=lambda *_: None)
    assert (out / "precious.txt").read_text() == "keep me"


def test_unreviewed_vector_file_is_an_error(tmp_path: Path) -> None:
    src = make_package(tmp_path / "pkgs")
    (src.root / "usr/share/backgrounds/new.svg").write_text("<svg/>")
    with pytest.raises(bd.DatasetBuildError, match="not a raster image and not in EXCLUDED"):
        bd.find_candidates(src, EXCLUDED)
