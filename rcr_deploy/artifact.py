"""THE artifact contract: what an export folder holds, how a manifest is read and checked, and how
a set of artifacts is committed at once. Every reader and writer of artifacts goes through here.

An export folder (`rcr-deploy export --out DIR`)::

    DIR/rcrnet.onnx       -> current/rcrnet.onnx        one stable link per artifact, sidecar and engines/
    DIR/rcrnet.onnx.json  -> current/rcrnet.onnx.json
    DIR/current           -> .versions/<id>             THE pointer, swapped by one os.replace
    DIR/.versions/<id>/   one committed export set (the previous one is kept for readers in flight)
    DIR/.versions/.staging-<id>/   an export in progress; swept by the next writer if its writer died
    DIR/.lock             held (flock) by the one writer

Readers open `DIR/<name>` like any file and always see one whole set: a precision that the
current set lacks has no link (every link resolves, so `cp -r`, `shutil.copytree` or `tar` of
the folder is a working export set).

API: `resolve` (a file or an export folder -> the artifact), `read_manifest` (sidecar, else the
copy embedded in the ONNX; schema-checked; sha256 verified), `write_manifest` (schema-checked,
atomic), `check_manifest` / `check_own_manifest`, `ExportSet` (lock, stage, commit: the one
writer of a set), `engines_writer` (the one other writer: TensorRT engines added to the published
set after the export, under the same lock).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from xml.etree import ElementTree
from pathlib import Path
from typing import Any

from rcr_deploy.errors import InternalError, ManifestError, RcrError
from rcr_deploy.fileio import sha256_file, umask_mode, write_text_atomic
from rcr_deploy.formats import FORMATS, by_path

#: Where `export` writes and where `bench`, `eval`, `infer` and `build` look by default.
DEFAULT_OUT_DIR = Path("rcr-deploy-out")
#: Artifact file names inside an export folder, by precision.
ARTIFACT_NAMES = {"fp32": "rcrnet.onnx", "fp16": "rcrnet-fp16.onnx", "int8": "rcrnet-int8.onnx"}
#: Where the manifest sits inside an artifact (read when the sidecar is lost): the ONNX
#: metadata_props key, and the OpenVINO IR's rt_info path (`<rt_info><rcr_deploy><manifest value=...>`).
MANIFEST_METADATA_KEY = "rcr_deploy.manifest"
IR_RT_INFO_KEY = ("rcr_deploy", "manifest")
#: The manifest's `format` and `version`; the schema of that version ships as manifest.schema.json.
MANIFEST_FORMAT = "rcr-deploy-manifest"
MANIFEST_VERSION = 2
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
#: The folder of TensorRT engines inside an export set, and TensorRT's timing cache in it.
ENGINES = "engines"
TIMING_CACHE = "timing.cache"
CURRENT = "current"
VERSIONS = ".versions"
STAGING_PREFIX = ".staging-"
LOCK = ".lock"


def manifest_path(artifact: str | os.PathLike) -> Path:
    """The JSON sidecar beside an artifact: `rcrnet.onnx` -> `rcrnet.onnx.json`."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def format_path(onnx_artifact: str | os.PathLike, fmt: str) -> Path:
    """An ONNX artifact's file in another format of the table (rcr_deploy.formats), beside it:
    `rcrnet-int8.onnx`, "openvino" -> `rcrnet-int8.xml`; a folder format's folder beside it."""
    row = FORMATS[fmt]
    return Path(onnx_artifact).parent / row.folder if row.folder else format_sibling(onnx_artifact, "onnx", row.suffixes[0])


def format_sibling(path: str | os.PathLike, fmt: str, suffix: str) -> Path:
    """Another file of the same artifact beside `path`, a file of format `fmt`: its first suffix
    swapped for `suffix` (`rcrnet-fp16.ncnn.param`, ".ncnn.bin" -> `rcrnet-fp16.ncnn.bin`).
    Not `Path.with_suffix`, which sees only the last dot of `.ncnn.param`."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(FORMATS[fmt].suffixes[0]) + suffix)


def format_files(path: Path, fmt: str) -> list[Path]:
    """Every file of one artifact in format `fmt`: one per suffix (an IR's `.xml` and `.bin`) and its
    manifest; a folder format's folder."""
    if FORMATS[fmt].folder:
        return [path]
    return [format_sibling(path, fmt, s) for s in FORMATS[fmt].suffixes] + [manifest_path(path)]


def is_export_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is an export folder: a folder that is not itself a model of the format table
    (a Core ML `.mlpackage` is a folder)."""
    return Path(path).is_dir() and by_path(path) is None


def resolve(path: str | os.PathLike, precision: str = "fp32") -> Path:
    """A model file as given, or an export folder's artifact of `precision`.

    Raises `RcrError` (exit 2) for a folder that lacks it, naming the export command that makes it."""
    path = Path(path)
    if not is_export_folder(path):
        return path
    artifact = path / ARTIFACT_NAMES[precision]
    if not artifact.is_file():
        # The command that makes it: a new set with what the folder has now plus the missing one.
        have = [p for p, name in ARTIFACT_NAMES.items() if (path / name).is_file()]
        wanted = [p for p in ARTIFACT_NAMES if p != "fp32" and (p in have or p == precision)]
        flags = (f" --precision {','.join(wanted)}" if wanted else "") + (" --calib DIR" if "int8" in wanted else "")
        flags += " --force" if have else ""
        raise RcrError(f"{artifact}: no {precision} artifact in this export folder; run 'rcr-deploy export CKPT --out {path}{flags}'")
    return artifact


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The manifest's JSON Schema (shipped with the package)."""
    return json.loads(SCHEMA_PATH.read_text())


def check_manifest(manifest: Any, source: str | os.PathLike) -> dict[str, Any]:
    """`manifest` if it satisfies the schema, else `ManifestError` naming the first wrong field."""
    import jsonschema

    if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT and manifest.get("version") != MANIFEST_VERSION:
        raise ManifestError(
            f"{source}: manifest version {manifest.get('version')!r}, this rcr-deploy reads version {MANIFEST_VERSION}; "
            "re-export the artifact with this version"
        )
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema()).iter_errors(manifest))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "(top level)"
        raise ManifestError(f"{source}: not an rcr-deploy manifest: {where}: {error.message[:200]}; re-export the artifact")
    wrong = _inconsistent(manifest)
    if wrong:
        raise ManifestError(f"{source}: not an rcr-deploy manifest: {wrong}; re-export the artifact")
    return manifest


def _inconsistent(manifest: dict[str, Any]) -> str | None:
    """The first pair of schema-valid fields that contradict each other, or None."""
    inp, out = manifest["input"], manifest["output"]
    size, shape = inp["size"], inp["shape"]
    channels = 3 if inp["prior_channel"] is None else 4
    in_c, in_hw = _channels_and_spatial(inp)
    out_c, _ = _channels_and_spatial(out)
    if size[0] != size[1]:
        return f"input/size {size} is not square (the letterbox makes a square)"
    if in_c != channels:
        return f"input/shape has {in_c} channels, but input/prior_channel {inp['prior_channel']} means {channels}"
    fixed = [d for d in in_hw if isinstance(d, int)]
    if fixed and fixed != size[: len(fixed)]:
        return f"input/shape {shape} does not match input/size {size}"
    if isinstance(out_c, int) and out_c != len(out["classes"]):
        return f"output/shape {out['shape']} has {out_c} channels for {len(out['classes'])} output/classes"
    return None


def _channels_and_spatial(record: dict[str, Any]) -> tuple[Any, list[Any]]:
    """A tensor record's channel count and spatial dimensions, by its layout (absent: NCHW)."""
    shape = record["shape"]
    if record.get("layout") == "NHWC":
        return shape[-1], shape[1:-1]
    return shape[1], shape[2:]


def require_usable(path: str | os.PathLike, manifest: dict[str, Any] | None) -> dict[str, Any]:
    """`manifest` if rcr-deploy can run its artifact as the export did: one exists (without it the
    input size and normalisation are unknown) and it asks for this version's preprocessing.
    infer, eval, bench and serve all go through here, so they accept the same artifacts."""
    from rcr_deploy.preprocess import input_spec

    if manifest is None:
        raise ManifestError(
            f"{path}: no manifest (no {manifest_path(path).name} beside it, none embedded), so its input "
            "size and normalisation are unknown; re-export it with 'rcr-deploy export' or put its .json back beside it"
        )
    spec, expected = manifest["input"], input_spec()
    for key in ("mean", "std", "pad_value"):
        if not all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-8) for a, b in zip(_listed(spec[key]), _listed(expected[key]))):
            raise ManifestError(
                f"{path}: manifest asks for {key} {spec[key]}, but this rcr-deploy normalises with "
                f"{expected[key]}; re-export the artifact with this version"
            )
    return manifest


def _listed(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_graph(path: str | os.PathLike, manifest: dict[str, Any] | None, inputs: list[list], outputs: list[list]) -> None:
    """Refuse a graph that is not an RCRNet artifact, from its own input and output shapes (each a
    list of int, or str/None for a dynamic axis), before any tensor is allocated for it: one
    N x 3|4 x H x W input, one N x 2 x H x W output, and fixed sizes that agree with `manifest`."""
    expect = "rcr-deploy runs RCRNet artifacts (one N x 3|4 x H x W input, one N x 2 x H x W output); pass one made by 'rcr-deploy export'"
    if len(inputs) != 1 or len(outputs) != 1:
        raise RcrError(f"{path}: a graph with {len(inputs)} inputs and {len(outputs)} outputs; {expect}")
    (inp,), (out,) = inputs, outputs
    if len(inp) != 4 or len(out) != 4 or inp[1] not in (3, 4) or out[1] != 2:
        raise RcrError(f"{path}: input shape {_shown(inp)} and output shape {_shown(out)}; {expect}")
    for a, b in zip(inp[2:], out[2:]):
        if isinstance(a, int) and isinstance(b, int) and a != b:
            raise RcrError(f"{path}: input shape {_shown(inp)} and output shape {_shown(out)} differ in size; {expect}")
    if manifest is None:
        return
    spec = manifest["input"]
    if spec["shape"][1] != inp[1]:
        raise ManifestError(f"{path}: its graph takes {inp[1]} channels, its manifest says {spec['shape'][1]}; re-export it, or put its own .json back beside it")
    fixed = [d for d in inp[2:] if isinstance(d, int)]
    if fixed and fixed != spec["size"][: len(fixed)]:
        raise ManifestError(
            f"{path}: its graph takes {'x'.join(map(str, fixed))} input, its manifest says input size {spec['size']}; "
            "re-export it, or put its own .json back beside it"
        )


def _shown(shape: list) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + "]"


def check_own_manifest(manifest: dict[str, Any], what: str) -> dict[str, Any]:
    """`check_manifest` for a manifest rcr-deploy made: failing the schema is our bug (`InternalError`)."""
    try:
        return check_manifest(manifest, what)
    except ManifestError as e:
        raise InternalError(f"made a manifest that fails its own schema: {e}") from e


def _loads(text: str | bytes, source: Path) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        what = "empty" if not text.strip() else f"not valid JSON ({e})"
        raise ManifestError(f"{source}: manifest is {what}; re-export the artifact or put its own .json back beside it") from e


def _embedded(artifact: Path) -> str | None:
    """The manifest text embedded in an ONNX model or an OpenVINO IR, or None."""
    if artifact.suffix == ".xml":
        try:
            found = ElementTree.parse(artifact).getroot().find("rt_info/" + "/".join(IR_RT_INFO_KEY))
        except ElementTree.ParseError as e:
            raise ManifestError(f"{artifact}: not a readable OpenVINO IR ({e}); re-export it") from e
        return None if found is None else found.get("value")
    import onnx  # heavy; only a sidecar-less ONNX artifact needs it

    try:
        model = onnx.load_model(str(artifact), load_external_data=False)
    except Exception as e:  # a protobuf that does not decode
        raise ManifestError(f"{artifact}: not a readable ONNX model ({str(e).splitlines()[0][:120]}); re-export it") from e
    return {p.key: p.value for p in model.metadata_props}.get(MANIFEST_METADATA_KEY)


def read_manifest(artifact: str | os.PathLike, *, missing_ok: bool = False, verify: bool = True) -> dict[str, Any] | None:
    """The manifest of an artifact (an `.onnx`, an OpenVINO `.xml`, an `.engine`, or an export
    folder's FP32 artifact).

    Its JSON sidecar, else the copy embedded in the model (ONNX metadata_props, IR rt_info). The result
    is checked against the schema, and with `verify` a sidecar's `artifact.sha256` against the
    file. Every failure is a `ManifestError` (exit 2) naming the file and the fix; no manifest at
    all gives None with `missing_ok`, else `ManifestError`."""
    artifact = resolve(artifact)
    sidecar = manifest_path(artifact)
    if sidecar.is_file():
        try:
            text = sidecar.read_bytes()
        except OSError as e:
            raise ManifestError(f"{sidecar}: cannot read it ({e.strerror}); check its permissions") from e
        manifest = check_manifest(_loads(text, sidecar), sidecar)
        recorded = (manifest.get("artifact") or {}).get("sha256")
        if verify and recorded and artifact.is_file():
            verify_bytes(artifact, recorded, sidecar)
        return manifest
    embedded = _embedded(artifact) if artifact.suffix in (".onnx", ".xml") and artifact.is_file() else None
    if embedded is not None:
        return check_manifest(_loads(embedded, artifact), f"{artifact} (embedded manifest)")
    if missing_ok:
        return None
    raise ManifestError(
        f"{artifact}: no manifest (no {sidecar.name} beside it, none embedded); re-export it with 'rcr-deploy export'"
    )


def verify_bytes(path: Path, recorded: str, record: str | os.PathLike) -> None:
    """Refuse `path` (a `ManifestError`, exit 2) unless its sha256 is `recorded`, the hash that
    the manifest `record` holds for it: a file damaged on disk or in transfer, changed, or from
    another export is never run."""
    try:
        actual = sha256_file(path)
    except OSError as e:
        raise ManifestError(f"{path}: cannot read it ({e.strerror}); check its permissions") from e
    if actual != recorded:
        raise ManifestError(
            f"{path}: its sha256 ({actual[:12]}...) is not the one {Path(record).name} records ({recorded[:12]}...), "
            "so the file is damaged or from another export; re-export it, or put back the file that export wrote"
        )


def write_manifest(artifact: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write `<artifact>.json` atomically, adding the artifact's own file name and sha256 (which the
    embedded copy cannot hold). The manifest is schema-checked first: a wrong one is our bug."""
    artifact = Path(artifact)
    record = check_own_manifest({**manifest, "artifact": {"file": artifact.name, "sha256": sha256_file(artifact)}}, artifact.name)
    path = manifest_path(artifact)
    write_text_atomic(path, json.dumps(record, indent=2))
    return path


# ------------------------------------------------------------------------ committing a set


def _swap_link(link: Path, target: str) -> None:
    """Point `link` at `target` in one atomic step (a new link renamed over the old one)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


class ExportSet:
    """The one writer of an export folder: an exclusive lock, a staging folder, and one atomic commit.

    ::

        with ExportSet(out_dir, names, force) as stage:
            write files into stage.path ...
            stage.commit()          # one os.replace of DIR/current; before it, DIR is unchanged

    Leaving the block without `commit()` (an error, Ctrl-C) removes the staging folder. A second
    writer on the same folder is refused while the first holds the lock."""

    def __init__(self, out_dir: str | os.PathLike, names: list[str], force: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.names = names
        self.force = force
        self.path = Path()
        self._lock: Any = None

    def __enter__(self) -> ExportSet:
        existing = [n for n in self.names if (self.out_dir / n).exists()]
        if existing and not self.force:
            raise RcrError(f"{self.out_dir / existing[0]} already exists; pass --force to replace it or choose another --out")
        versions = self.out_dir / VERSIONS
        try:
            versions.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RcrError(f"cannot write to {self.out_dir}: {e.strerror}; choose a writable folder with --out") from e
        self._lock = _take_lock(self.out_dir)
        # Holding the lock, any staging folder is a dead writer's leftover.
        for stale in versions.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{stamp}-", dir=versions))
        os.chmod(self.path, umask_mode(0o777))  # mkdtemp's 0700 would hide the published set from other users
        (self.path / ENGINES).mkdir()
        timing = self.out_dir / CURRENT / ENGINES / TIMING_CACHE
        if timing.is_file():  # TensorRT's timing cache outlives the set it was made for
            shutil.copy2(timing, self.path / ENGINES / timing.name)
        return self

    def commit(self) -> Path:
        """Publish the staged set: rename it to a version, swap `current` onto it, link every name."""
        version = self.path.with_name(self.path.name[len(STAGING_PREFIX):])
        os.replace(self.path, version)
        self.path = version
        names = {e.name for e in version.iterdir()}
        for name in sorted(names):
            link = self.out_dir / name
            if not (link.is_symlink() and os.readlink(link) == f"{CURRENT}/{name}"):
                if link.is_dir() and not link.is_symlink():
                    shutil.rmtree(link)  # an engines/ folder of the older layout
                _swap_link(link, f"{CURRENT}/{name}")
        previous = (self.out_dir / CURRENT).resolve() if (self.out_dir / CURRENT).is_symlink() else None
        _swap_link(self.out_dir / CURRENT, f"{VERSIONS}/{version.name}")
        # A name this set lacks loses its link (which would dangle: a copy by cp, copytree or tar
        # then fails) and any loose file of the older, unversioned layout.
        known = {p.name for a in ARTIFACT_NAMES.values() for f in FORMATS for p in (Path(a), manifest_path(a), *format_files(format_path(a, f), f))}
        for name in sorted(known - names):
            link = self.out_dir / name
            if link.is_symlink() or link.is_file():
                link.unlink()
        keep = (version.resolve(), previous)
        for old in (self.out_dir / VERSIONS).iterdir():
            if old.resolve() not in keep and not old.name.startswith(STAGING_PREFIX):
                shutil.rmtree(old, ignore_errors=True)
        return version

    def __exit__(self, *exc: object) -> None:
        if self.path.name.startswith(STAGING_PREFIX):
            shutil.rmtree(self.path, ignore_errors=True)
        _release_lock(self._lock)


@contextlib.contextmanager
def engines_writer(folder: str | os.PathLike) -> Iterator[None]:
    """Hold `folder`'s writer lock while TensorRT engines and their timing cache are written into
    its published set's engines/ (`build`, `bench --engine`: an engine is made for one GPU, after
    the export). The lock is `ExportSet`'s, so an engine never lands in a set an export is
    replacing, and two builds never write one cache at once. A folder that is not an export
    folder (`build --cache-dir`) has no lock to take."""
    folder = Path(folder)
    if not (folder / LOCK).exists():
        yield
        return
    lock = _take_lock(folder)
    try:
        yield
    finally:
        _release_lock(lock)


def _take_lock(out_dir: Path) -> Any:
    """`out_dir`'s writer lock, held (flock), or `RcrError` while another writer holds it."""
    try:
        lock = open(out_dir / LOCK, "a+")
    except OSError as e:
        raise RcrError(f"cannot write to {out_dir}: {e.strerror}; choose a writable folder with --out") from e
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise RcrError(f"{out_dir}: another export is writing to this folder; wait for it to finish or choose another --out") from None
    return lock


def _release_lock(lock: Any) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
