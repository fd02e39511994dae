"""The `rcr-deploy` command line: thin typer commands that parse options and call the library.

Errors become one line on stderr (a traceback only with --debug), by class, through the one
mapping `errors.report`: bad input (`RcrError`) exits 2; a failed check (`VerificationError`)
exits 1; our own defect (`InternalError`) exits 1 and says it is a bug.

Each command imports the library it calls inside its body: `rcr-deploy --help` and a command's
option errors then answer without loading torch, OpenVINO or Ray, which take seconds.

Why one file of about 700 lines: the design card keeps the whole command line in cli.py, and most
of its length is the commands' option declarations; each command body only parses and calls.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from rcr_deploy.errors import TYPED, RcrError, VerificationError, report
from rcr_deploy.formats import AUTO, FORMATS, backends
from rcr_deploy.serve import protocol as serve_limits

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="RCRNet portrait segmentation from PyTorch training to a measured, deployed engine.",
)
console = Console()
_state = {"debug": False, "interrupted": False}


def _print_version(value: bool) -> None:
    if value:
        from rcr_deploy import __version__

        print(f"rcr-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug/--no-debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    _state["debug"] = debug


def main() -> None:
    """Console-script entry point: maps typed errors to one line and an exit code; Ctrl-C
    (SIGINT) exits 130 wherever it lands, also where a library turned it into an error of its own."""
    _state["interrupted"] = False
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where the shell ignores it
        signal.signal(signal.SIGINT, _on_interrupt)
    try:
        app()
    except SystemExit as e:
        # click reports Ctrl-C as "Aborted!" and exit 1; 130 is the shell's convention. A command
        # that handles Ctrl-C as its normal stop (serve) still exits 0.
        sys.exit(130 if _state["interrupted"] and e.code not in (0, None) else e.code)
    except TYPED as e:
        if _state["interrupted"]:
            sys.exit(130)
        if _state["debug"]:
            raise
        sys.exit(report(e))


def _on_interrupt(signum: int, frame: object) -> None:
    """SIGINT (and, while training or serving, SIGTERM): remembered, then Python's KeyboardInterrupt."""
    _state["interrupted"] = True
    raise KeyboardInterrupt(signal.Signals(signum).name)


# ------------------------------------------------------------------------------ option checks


def _range(lo: float, hi: float, multiple: int = 1) -> Callable[[typer.Context, typer.CallbackParam, Any], Any]:
    """A typer callback for a numeric option (or a comma list of integers, or a tuple whose first
    item is the number): NaN, Inf and values outside [lo, hi] or off `multiple` are one line, exit 2.
    Typer's own min/max lets NaN through and prints a usage panel, hence this one helper."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        if value is None:
            return value
        items = value.split(",") if isinstance(value, str) else [value[0] if isinstance(value, tuple) else value]
        for item in items:
            try:
                x = float(item)
            except (ValueError, OverflowError):
                x = math.nan
            if not (math.isfinite(x) and lo <= x <= hi and (multiple == 1 or x % multiple == 0)):
                step = f" and a multiple of {multiple}" if multiple > 1 else ""
                shown = value if isinstance(value, str) else item
                raise RcrError(f"{param.opts[0] if param.opts else param.name} {shown}: must be a number from {lo:g} to {hi:g}{step}")
        return value

    return check


def _device(allow_auto: bool = False) -> Callable[[typer.Context, typer.CallbackParam, Any], Any]:
    """A typer callback for --device: cpu, cuda or cuda:N (and auto where offered); CUDA only where
    this torch build sees a GPU."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        if value is None or value == "cpu" or (allow_auto and value == "auto"):
            return value
        kind, _, index = str(value).partition(":")
        if kind != "cuda" or (index and not index.isdigit()):
            choices = "auto, cpu, cuda or cuda:N" if allow_auto else "cpu, cuda or cuda:N"
            raise RcrError(f"--device {value}: unknown device; pass {choices}")
        import torch

        if not torch.cuda.is_available():
            raise RcrError(f"--device {value}: this torch sees no CUDA GPU (a CPU-only build or no GPU); pass --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise RcrError(f"--device {value}: this machine has {torch.cuda.device_count()} GPU(s); pass cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return value

    return check


SIZE = _range(32, 4096, 32)  # model input sizes: the network downsamples by 32
BACKEND_HELP = (
    f"auto (the fastest installed: {FORMATS[AUTO[0]].backend} on the CPU for a checkpoint or export folder, see "
    f"docs/cpu-engines.md), or one of {', '.join(backends()[1:])}."
)
EXPORTABLE = [f for f in FORMATS.values() if f.exporter]
EXPORT_FORMAT_HELP = (
    "Comma list of onnx, " + ", ".join(f"{f.name} ({f.title}: {f.folder + '/' if f.folder else ' + '.join(f.suffixes)})" for f in EXPORTABLE)
    + "; onnx is always written. Default: onnx and "
    + (", ".join(f.name for f in EXPORTABLE if f.default) or "nothing else") + " where installed."
)
BENCH_BACKEND_HELP = (
    "Comma-separated: 'all' (default unless --engine or artifact files are given), 'torch' (the checkpoint's forms), "
    + ", ".join(f"'{f.backend}' (the {f.title}s of the export folder)" for f in FORMATS.values() if f.bench)
    + ", or target names: torch-train, torch-deploy, torch-compile, torch-fp16, onnxruntime-unfused, "
    + ", ".join(f"{f.backend}-{{{','.join(f.precisions)}}}" for f in FORMATS.values() if f.bench) + "."
)
MODEL_HELP = (
    "Checkpoint (.pt), export folder, or a file of "
    + ", ".join(f"{f.title} ({f.suffixes[0]})" for f in FORMATS.values() if f.runner)
    + "; default: the built-in model."
)
BATCH = _range(1, 4096)
COUNT = _range(1, 10**9)  # --limit, --frames, --iters, ...
THREADS = _range(1, 1024)
TOLERANCE = _range(0, 1e6)


# ---------------------------------------------------------------------------------------- models


@app.command()
def models(
    size: int = typer.Option(224, help="Square input size for the MAC count.", callback=SIZE),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Every registered variant: parameters (train and deploy form) and MACs beside the paper's."""
    from rcr_deploy.benchmarks.cost import count_macs_torch, count_params
    from rcr_deploy.models import VARIANTS, build_model
    from rcr_deploy.reparam import reparameterize

    rows = []
    for name, v in VARIANTS.items():
        model = build_model(name)
        deploy = reparameterize(model)
        params, params_deploy = count_params(model), count_params(deploy)
        macs = count_macs_torch(deploy, (size, size))
        rows.append(
            dict(
                variant=name,
                symbol=v.symbol,
                description=v.description,
                params_train=params,
                params_deploy=params_deploy,
                macs=macs,
                paper_params=int(v.paper_params_m * 1e6),
                paper_flops=int(v.paper_flops_m * 1e6),
                params_vs_paper=params / (v.paper_params_m * 1e6) - 1,
                macs_vs_paper=macs / (v.paper_flops_m * 1e6) - 1,
                paper_miou=v.paper_miou,
            )
        )
    if as_json:
        print(json.dumps({"input": [1, 4, size, size], "variants": rows}, indent=2))
        return
    table = Table(title=f"RCRNet family at {size}x{size}, 4 input channels (paper 'FLOPs' are MACs)")
    for col in ["variant", "", "params train", "params deploy", "MACs", "paper params", "paper FLOPs", "paper mIoU"]:
        table.add_column(col, justify="left" if col in ("variant", "") else "right", no_wrap=col == "variant")
    for r in rows:
        table.add_row(
            r["variant"],
            r["symbol"],
            f"{r['params_train'] / 1e6:.3f} M ({r['params_vs_paper']:+.1%})",
            f"{r['params_deploy'] / 1e6:.3f} M",
            f"{r['macs'] / 1e6:.0f} M ({r['macs_vs_paper']:+.1%})",
            f"{r['paper_params'] / 1e6:.3f} M",
            f"{r['paper_flops'] / 1e6:.0f} M",
            f"{r['paper_miou']:.2f}",
        )
    console.print(table)


# -------------------------------------------------------------------------------- verify-reparam


@app.command("verify-reparam")
def verify_reparam(
    ckpt: Optional[Path] = typer.Argument(None, help="Train-form checkpoint; default: every variant at random weights."),
    arch: Optional[str] = typer.Option(None, help="Architecture of a bare state_dict."),
    rtol32: float = typer.Option(1e-4, help="float32: pass if max|a-b| <= atol + rtol * max|ref|.", callback=TOLERANCE),
    atol32: float = typer.Option(1e-5, help="float32 absolute tolerance.", callback=TOLERANCE),
    rtol64: float = typer.Option(1e-10, help="float64 relative tolerance.", callback=TOLERANCE),
    atol64: float = typer.Option(1e-12, help="float64 absolute tolerance.", callback=TOLERANCE),
    seed: int = typer.Option(0, help="Seed for random weights, BN statistics and inputs.", callback=_range(0, 2**32 - 1)),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Prove the deploy form computes what the train form does. Exit 0 pass, 1 mismatch, 2 bad input."""
    import torch

    from rcr_deploy.checkpoint import load_checkpoint
    from rcr_deploy.models import VARIANTS, build_model
    from rcr_deploy.reparam import Tolerance, randomize_bn, verify_model

    tolerances = {torch.float32: Tolerance(rtol32, atol32), torch.float64: Tolerance(rtol64, atol64)}
    if ckpt is not None:
        loaded = load_checkpoint(ckpt, arch=arch, require_form="train")
        targets = [(loaded.arch, loaded.model)]
    else:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        targets = []
        for name in VARIANTS:
            model = build_model(name)
            randomize_bn(model, generator)
            targets.append((name, model))
    results = []
    for name, model in targets:
        results += verify_model(model, name, tolerances=tolerances, seed=seed)
    failed = [r for r in results if not r]
    if as_json:
        print(json.dumps({"passed": not failed, "checks": [dataclasses.asdict(r) for r in results]}, indent=2))
    else:
        _print_checks(results)
    if failed:
        worst = max(failed, key=lambda r: r.ratio)
        raise VerificationError(
            f"{len(failed)} of {len(results)} checks beyond tolerance; worst {worst.name} [{worst.dtype}] "
            f"max abs {worst.max_abs:.3e}, max rel {worst.max_rel:.3e} at {worst.worst_index}"
        )


def _print_checks(results: list) -> None:
    table = Table(title="train form (eval) vs deploy form")
    for col in ["check", "dtype", "max abs", "max rel", "worst at", "tol (rtol/atol)", ""]:
        table.add_column(col, justify="right" if col.startswith("max") else "left")
    for r in results:
        table.add_row(
            r.name,
            r.dtype,
            f"{r.max_abs:.2e}",
            f"{r.max_rel:.2e}",
            str(r.worst_index),
            f"{r.rtol:.0e}/{r.atol:.0e}",
            "[green]ok[/]" if r else "[red]FAIL[/]",
        )
    console.print(table)
    worst = max(results, key=lambda r: r.ratio)
    status = "[green]all passed[/]" if all(results) else "[red]FAILED[/]"
    console.print(
        f"{status}: {len(results)} checks; closest to tolerance: {worst.name} [{worst.dtype}] "
        f"max rel {worst.max_rel:.2e} at {worst.worst_index}"
    )


# ---- infer


@app.command()
def infer(
    source: str = typer.Argument(..., metavar="INPUT", help="An image, a folder of images, a video file, or a camera index (0, 1, ...)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder; default rcr-deploy-out/infer."),
    save: str = typer.Option("overlay,mask", help="Comma-separated outputs: mask, cutout (RGBA PNG), background, overlay, before-after."),
    background: Optional[str] = typer.Option(None, help="Replace the background with an IMAGE (resized to the frame), 'blur' or '#RRGGBB'."),
    feather: float = typer.Option(0.0, help="Soften the mask's edge: Gaussian sigma in pixels (0: hard edge).", callback=_range(0, 500)),
    prior: bool = typer.Option(True, "--prior/--no-prior", help="Feed the previous frame's mask to the model (video and camera)."),
    frames: Optional[int] = typer.Option(None, help="Stop after this many frames or images (a camera otherwise runs until Ctrl-C).", callback=COUNT),
    codec: str = typer.Option("h264", help="Video encoder: h264 (plays in browsers) or another FFmpeg encoder (mpeg4, hevc, ...); if it cannot be written, h264 then mpeg4 are used. Without PyAV: an OpenCV FourCC (h264 means mp4v), falling back to mp4v/.mp4, then MJPG/.avi."),
    pipeline: bool = typer.Option(True, "--pipeline/--no-pipeline", help="Overlap decoding and encoding with the model (threads)."),
    device: str = typer.Option("cpu", help="cpu or cuda, for any model (ONNX on CUDA needs onnxruntime-gpu; an engine needs cuda).", callback=_device()),
    server: Optional[str] = typer.Option(None, help="URL of a running 'rcr-deploy serve' to segment with instead of --model."),
    backend: str = typer.Option("auto", help=BACKEND_HELP),
    size: Optional[int] = typer.Option(None, help="Model input size (a multiple of 32); default: the artifact's manifest, else 224.", callback=SIZE),
    ray: bool = typer.Option(False, "--ray", help="Segment a folder of images on Ray workers (the 'serve' extra); the same files as without it."),
    ray_address: Optional[str] = typer.Option(None, help="With --ray: join this Ray cluster (HOST:PORT, 'auto' or ray://...) instead of starting Ray here."),
    replicas: Optional[int] = typer.Option(None, help="With --ray: model workers (Ray actors), each loading the model once; default 1.", callback=THREADS),
    threads: Optional[int] = typer.Option(None, help="With --ray: the model's CPU threads per worker; default: the cores shared among the workers.", callback=THREADS),
    skip_done: bool = typer.Option(False, "--skip-done", help="For a folder: leave out the images whose every output is in --out already (resume an interrupted run)."),
) -> None:
    """Segment an image, a folder, a video or a camera; write masks, cut-outs, new backgrounds or overlays."""
    from rcr_deploy.infer import STAGES, infer as run_infer
    from rcr_deploy.artifact import DEFAULT_OUT_DIR

    if server and (model is not None or size is not None or backend != "auto"):
        raise RcrError("--server with --model, --size or --backend: a server runs the model it was started with ('rcr-deploy serve MODEL'); drop them")
    ray = ray or ray_address is not None
    if not ray and (replicas is not None or threads is not None):
        raise RcrError("--replicas and --threads set Ray's workers; add --ray (for a folder of images)")
    if ray and server:
        raise RcrError("--ray with --server: the server segments with its own replicas; drop one of them")
    remote = None
    if server:  # the serve package's client, chosen here so that the library never imports it
        from rcr_deploy.serve.client import RemoteSegmenter

        remote = functools.partial(RemoteSegmenter, server)
    out = out or DEFAULT_OUT_DIR / "infer"
    if ray:
        batch = _import_ray("rcr_deploy.serve.batch", "Ray")
        result = batch.infer_folder(
            source, model, out, save=save, background=background, feather=feather, max_frames=frames, pipelined=pipeline,
            device=device, backend=backend, size=size, replicas=replicas or 1, threads=threads, address=ray_address, announce=console.print,
            skip_done=skip_done,
        )
    else:
        result = run_infer(
            source, model, out, save=save, background=background, feather=feather, prior=prior,
            max_frames=frames, codec=codec, pipelined=pipeline, device=device, remote=remote, backend=backend, size=size,
            skip_done=skip_done,
        )
    t = result.timings
    table = Table(title="where the time goes")
    table.add_column("stage")
    table.add_column("ms/frame", justify="right")
    table.add_column("share", justify="right")
    per_frame = t.ms_per_frame()
    busy = sum(per_frame.values()) or 1.0
    for stage in STAGES:
        table.add_row(stage, f"{per_frame[stage]:.1f}", f"{per_frame[stage] / busy:.0%}")
    table.add_row("wall clock", f"{1000 * t.wall_s / max(t.frames, 1):.1f}", "", style="bold")
    console.print(table)
    console.print(
        f"{result.model} on {t.frames} frame(s) ({result.kind}): {t.fps:.1f} FPS, "
        f"prior {'on' if result.prior else 'off'}, {'pipelined' if t.pipelined else 'one thread'}"
    )
    console.print(f"wrote {len(result.written)} file(s) to {out}/")


# ---- serve


@app.command()
def serve(
    model: Optional[Path] = typer.Argument(None, help=MODEL_HELP),
    replicas: int = typer.Option(1, min=1, help="Model replicas (processes); Ray Serve spreads requests over them."),
    max_batch: int = typer.Option(8, min=1, help="Most requests run as one model call (1: no batching)."),
    batch_wait_ms: float = typer.Option(5.0, min=0.0, help="How long a replica waits to fill a batch."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="HTTP port (1 to 65535).", callback=_range(1, 65535)),
    threads: Optional[int] = typer.Option(None, min=1, help="The model's CPU threads per replica; default: the cores shared among the replicas."),
    max_megapixels: float = typer.Option(serve_limits.MAX_MEGAPIXELS, min=0.01, help="Refuse larger images (HTTP 413), bounding each request's memory."),
    session_idle_s: float = typer.Option(serve_limits.SESSION_IDLE_S, min=1.0, help="Forget a video session's previous mask after this many idle seconds."),
    backend: str = typer.Option("auto", help=BACKEND_HELP),
    max_queued: int = typer.Option(serve_limits.MAX_QUEUED, min=1, help="Requests queued beyond each replica's two batches (shared out among the replicas, and as many again at the HTTP proxy); more get HTTP 503 with Retry-After at once."),
    request_timeout_s: float = typer.Option(serve_limits.REQUEST_TIMEOUT_S, min=0.1, help="A request not answered within this many seconds gets HTTP 408."),
    v2_name: str = typer.Option(serve_limits.V2_MODEL_NAME, help="The model's name in the Open Inference Protocol (/v2/models/NAME)."),
    cors_origin: Optional[list[str]] = typer.Option(None, help="A browser origin allowed to call the server (CORS), e.g. https://app.example.com; repeat for more, '*' for any."),
    max_sessions: int = typer.Option(serve_limits.MAX_SESSIONS, min=1, help="Video sessions each replica keeps; past that the least recently seen is forgotten."),
) -> None:
    """Serve the model over HTTP with Ray Serve: POST /segment, the Open Inference Protocol (/v2), GET /healthz, /readyz, /v1/model."""
    import time

    serve_app = _import_ray("rcr_deploy.serve.app", "Ray Serve")
    console.print(f"starting Ray Serve: {replicas} replica(s), batches of up to {max_batch} (wait {batch_wait_ms:g} ms) ...")
    try:  # Ctrl-C while Ray starts also shuts down cleanly
        url = serve_app.start(
            model, replicas=replicas, max_batch=max_batch, batch_wait_ms=batch_wait_ms, host=host, port=port,
            threads=threads, session_idle_s=session_idle_s, max_megapixels=max_megapixels, backend=backend,
            max_queued=max_queued, request_timeout_s=request_timeout_s, v2_name=v2_name, cors_origins=cors_origin,
            max_sessions=max_sessions,
        )
        console.print(f"[green]serving[/] at {url}  (POST {url}/segment, {url}/v2/models/{v2_name}/infer, {url}/docs); Ctrl-C stops")
        _interrupt_on_term()  # after Ray's start, which sets its own handlers: SIGTERM shuts down as Ctrl-C does
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("shutting down ...")
    finally:
        serve_app.stop()


def _import_ray(module: str, what: str) -> Any:
    """`module`, which imports Ray; one line (exit 2) where Ray cannot be imported."""
    import importlib

    from rcr_deploy.errors import BackendUnavailable

    try:
        return importlib.import_module(module)
    except Exception as e:  # not only ImportError: protobuf's VersionError when a later install changed protobuf under Ray
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BackendUnavailable(
            f"{what} cannot be imported ({type(e).__name__}: {reason}); "
            "pip install 'rcr-deploy[serve,triton]' in one command (tritonclient pins protobuf<7)"
        ) from e


# ---- train


def _interrupt_on_term() -> None:
    """SIGINT and SIGTERM both stop training through KeyboardInterrupt, which saves last.pt: a run
    started in the background by a non-interactive shell would otherwise ignore SIGINT."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_interrupt)


@app.command()
def train(
    data: Optional[list[Path]] = typer.Option(
        None, help="Dataset folder: images/ + masks/ (or the P3M-10K layout). Repeat it to train on several datasets "
        "together, e.g. --data eg1800/ --data ccp/: each is validated on its own split.",
    ),
    data_weights: Optional[str] = typer.Option(
        None, help="Sampling weight of each --data folder, in order, e.g. 1,1 (default: each pair once per epoch).",
        callback=_range(1e-6, 1e6),
    ),
    out: Optional[Path] = typer.Option(None, help="Run folder for config.json, last.pt, best.pt, history.json."),
    arch: Optional[str] = typer.Option(None, help="Architecture (see 'rcr-deploy models'); default rcrnet."),
    config: Optional[Path] = typer.Option(None, help="A saved config.json to start from; options given here override it."),
    resume: Optional[Path] = typer.Option(None, help="Continue a run from its last.pt (its config, then these options)."),
    train_split: Optional[str] = typer.Option(None, help="train | all | p3m-train | a file of ids."),
    val_split: Optional[str] = typer.Option(None, help="val | p3m-500-p | p3m-500-np | a file of ids | '' for none."),
    size: Optional[int] = typer.Option(None, help="Square training size (default 224).", callback=SIZE),
    progressive: Optional[str] = typer.Option(
        None, help="Progressive resizing: smaller sizes first, e.g. 160,192 trains the first third of the epochs at 160, "
        "the second at 192 and the last at --size ('' for none).", callback=lambda ctx, param, value: value if value == "" else SIZE(ctx, param, value),
    ),
    epochs: Optional[int] = typer.Option(None, help="Epochs (paper: 2000)."),
    batch: Optional[int] = typer.Option(None, help="Samples per step per process (default 32, as the paper).", callback=BATCH),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (default 1e-3; paper 1e-2, see README)."),
    weight_decay: Optional[float] = typer.Option(None, help="Adam weight decay (default 5e-4)."),
    seed: Optional[int] = typer.Option(None, help="Seed for weights, data order and augmentation."),
    workers: Optional[int] = typer.Option(None, help="Data-loader worker processes per training process."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (0: torch's default)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N].", callback=_device(allow_auto=True)),
    init: Optional[Path] = typer.Option(None, help="Start from this train-form checkpoint's weights, with a fresh optimiser."),
    distill: Optional[Path] = typer.Option(
        None, help="Also pull the model towards this frozen model's answers (train or deploy form, e.g. the model "
        "--init starts from), so that fine-tuning on new data keeps what it did on the old.",
    ),
    distill_weights: Optional[str] = typer.Option(
        None, help="Weight of --distill on each --data folder's samples, in order, e.g. 1,0: only the first (default: 1 each).",
        callback=_range(0, 1e6),
    ),
    amp: Optional[str] = typer.Option(None, help="Autocast: auto (bf16 on CUDA, off on the CPU) | bf16 | fp16 | off."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", help="NHWC memory format (default: on CUDA only)."),
    cache: Optional[bool] = typer.Option(None, "--cache/--no-cache", help="Decode the training images once, into memory."),
    anywhere: Optional[bool] = typer.Option(None, "--anywhere/--no-anywhere", help="Add wider scales, a pasted second person, low light and colour casts."),
    schedule: Optional[str] = typer.Option(None, help="paper: lr x 0.95^(epoch/20); cosine: warm-up, then cosine to 0 at the last epoch."),
    warmup_epochs: Optional[int] = typer.Option(None, help="Linear warm-up epochs of the cosine schedule."),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", help="Stop after the epoch that crosses this many minutes; with --schedule cosine the epochs are planned to fit.", callback=_range(0.01, 10**7)),
    save_every: Optional[int] = typer.Option(None, help="Also save last.pt every N steps (0: per epoch only)."),
    val_every: Optional[int] = typer.Option(None, help="Validate every N epochs (and after the last)."),
    val_limit: Optional[int] = typer.Option(None, help="Validate on the first N validation images only (0: all)."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after N optimiser steps in all (0: no limit)."),
) -> None:
    """Train a model with the paper's recipe; with torchrun, on many GPUs or nodes (DDP)."""
    given = {k: v for k, v in locals().items() if v is not None and k not in ("config", "resume", "time_limit")}
    from rcr_deploy.fileio import check_output, regular_file
    from rcr_deploy.train.trainer import TrainConfig, Trainer, resume_config

    if time_limit is not None:
        given["time_limit_min"] = time_limit
    if progressive is not None:
        given["progressive"] = [int(s) for s in progressive.split(",") if s]
    if data is not None:
        given["data"] = [str(d) for d in data]
    for name, value in (("data_weights", data_weights), ("distill_weights", distill_weights)):
        if value is not None:
            given[name] = [float(w) for w in value.split(",")]
    given = {k: str(v) if isinstance(v, Path) else v for k, v in given.items()}
    if config:
        regular_file(config, "config file")
    base = TrainConfig.load(config) if config else resume_config(resume) if resume else TrainConfig()
    cfg = TrainConfig.from_dict({**dataclasses.asdict(base), **given}, "options")
    if not cfg.data:
        raise RcrError("no dataset: pass --data DIR (a folder with images/ and masks/), once per dataset")
    if not given.get("out") and not config and not resume:
        cfg.out = f"runs/{cfg.arch}"
    check_output(cfg.out, "--out", folder=True)
    _interrupt_on_term()
    result = Trainer(cfg, resume=resume).fit()
    if result.best:
        console.print(
            f"best epoch {result.best['epoch']}: val mean per-image foreground IoU {result.best['val_fg_miou']:.4f}, "
            f"class-mean IoU {result.best['val_class_miou']:.4f}; checkpoints in {cfg.out} (stopped: {result.stopped})"
        )
    else:
        console.print(f"checkpoints in {cfg.out} (stopped: {result.stopped})")


# ---- bench


@app.command()
def bench(
    artifacts: Optional[list[Path]] = typer.Argument(
        None, metavar="ARTIFACT", help="Export folder (default rcr-deploy-out), or model files to time as they are ("
        + ", ".join(f.suffixes[0] for f in FORMATS.values() if f.runner) + ")."
    ),
    backend: Optional[str] = typer.Option(
        None, help=BENCH_BACKEND_HELP),
    engine: Optional[str] = typer.Option(None, help="TensorRT engine(s) of the exported artifacts to time: fp32, fp16, int8 (built if missing)."),
    batch: str = typer.Option("1", help="Batch sizes to sweep, e.g. 1,8,32.", callback=BATCH),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch and onnxruntime (default: all usable cores).", callback=THREADS),
    size: int = typer.Option(224, help="Square input size.", callback=SIZE),
    warmup: int = typer.Option(10, help="Untimed warm-up calls per batch size.", callback=_range(0, 10**6)),
    iters: int = typer.Option(50, help="Timed calls per batch size.", callback=COUNT),
    max_seconds: float = typer.Option(20.0, help="Stop timing a cell after this long (at least one call is timed).", callback=_range(0.001, 10**6)),
    device: str = typer.Option("auto", help="cpu, cuda or auto (cuda where torch sees a GPU).", callback=_device(allow_auto=True)),
    cuda_graphs: bool = typer.Option(False, "--cuda-graphs/--no-cuda-graphs", help="Time torch on the GPU as CUDA-graph replays."),
    ckpt: Optional[Path] = typer.Option(None, help="Train-form checkpoint for the torch rows (default: the one the export recorded)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of the table."),
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="Also write the report as JSON (schema: benchmarks/schema.json)."),
    md_out: Optional[Path] = typer.Option(None, "--md", help="Write the report as markdown."),
    plot_out: Optional[Path] = typer.Option(None, "--plot", help="Write the speed-accuracy chart (PNG)."),
    sizes: Optional[str] = typer.Option(
        None, help="Comma list of input sizes, e.g. 128,160,192,224: export the model at each, time every CPU engine "
        "(and MediaPipe, where installed), score each on --data's validation split, draw the Pareto plot "
        "(into rcr-deploy-out/bench-sizes/).", callback=SIZE,
    ),
    data: Optional[Path] = typer.Option(None, help="With --sizes: labelled folder for mIoU (validation split) and INT8 calibration (train split)."),
) -> None:
    """Latency, throughput, size, cost and memory of every backend, in one table (ratios vs the train form)."""
    import os
    import shlex

    from rcr_deploy.artifact import DEFAULT_OUT_DIR, is_export_folder

    if sizes is not None:
        from rcr_deploy.benchmarks import cpu_engines

        if artifacts or backend or engine or batch != "1":
            raise RcrError("--sizes times the built-in or --ckpt model's CPU engines at each size; drop ARTIFACT, --backend, --engine and --batch")
        if data is None:
            raise RcrError("--sizes needs --data DIR (a labelled folder: mIoU on its validation split, INT8 calibration from its train split)")
        argv = ["--sizes", sizes, "--data", str(data), "--iters", str(iters), "--warmup", str(warmup), "--max-seconds", str(max_seconds)]
        argv += ["--threads", str(threads or len(os.sched_getaffinity(0))), "--out", str(DEFAULT_OUT_DIR / "bench-sizes")]
        argv += ["--ckpt", str(ckpt)] if ckpt else []
        cpu_engines.main(argv)
        return
    if data is not None:
        raise RcrError("--data is for --sizes; a plain bench reads accuracy from the artifacts' manifests ('export --val DIR')")

    from rcr_deploy.benchmarks.harness import BenchConfig, parse_batches, run_bench, select_backends
    from rcr_deploy.benchmarks.report import print_table, write_json, write_markdown
    from rcr_deploy.fileio import check_output

    for option, path in (("--json-out", json_out), ("--md", md_out), ("--plot", plot_out)):
        if path:
            check_output(path, option)

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    folders = [p for p in artifacts or [] if is_export_folder(p)]
    files = [p for p in artifacts or [] if not is_export_folder(p)]
    if len(folders) > 1:
        raise RcrError(f"bench takes one export folder, got {len(folders)}: {', '.join(map(str, folders))}; pass one")
    engines = [e.strip() for e in engine.split(",")] if engine else []
    if backend is None:
        backend = "" if engines or files else "all"
    config = BenchConfig(
        backends=select_backends(backend, device),
        engines=engines,
        artifacts=files,
        batches=parse_batches(batch),
        out_dir=folders[0] if folders else DEFAULT_OUT_DIR,
        ckpt=ckpt,
        size=size,
        threads=threads or len(os.sched_getaffinity(0)),
        warmup=warmup,
        iters=iters,
        max_seconds=max_seconds,
        device=device,
        cuda_graphs=cuda_graphs,
    )
    report = run_bench(config, command=shlex.join(["rcr-deploy", *sys.argv[1:]]))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report, console)
    if json_out:
        write_json(report, json_out)
    if md_out:
        write_markdown(report, md_out)
    if plot_out:
        from rcr_deploy.benchmarks.plot import plot_speed_accuracy

        plot_speed_accuracy(report, plot_out)
    for path in (json_out, md_out, plot_out):
        if path and not as_json:
            console.print(f"wrote {path}")


# ---- eval


@app.command("eval")
def eval_(
    model: Optional[Path] = typer.Argument(None, help=MODEL_HELP),
    data: list[Path] = typer.Option(..., help="Dataset folder: images/ + masks/ (or the P3M-10K layout). Repeat it to score several datasets in one table."),
    split: Optional[str] = typer.Option(None, help="all (default) | train | val | p3m-500-p | p3m-500-np | a file of ids (one --data only)."),
    size: Optional[int] = typer.Option(None, help="Model input size; default: the artifact's manifest, else 224.", callback=SIZE),
    limit: Optional[int] = typer.Option(None, help="Score only the first N images of each dataset.", callback=COUNT),
    batch: int = typer.Option(8, help="Images per inference call.", callback=BATCH),
    framing: str = typer.Option("as-is", help="Score the pictures in these framings (comma-separated, or all): as-is; reframed (half size, shifted); cut (by an edge); landscape (16:9 or 4:3 over another picture); crowd (another picture's person pasted in front)."),
    reframe: bool = typer.Option(False, "--reframe/--no-reframe", help="Short for --framing reframed."),
    peer: bool = typer.Option(True, "--peer/--no-peer", help="Score MediaPipe's selfie segmenter on the same images beside each row, where the 'peer' extra is installed."),
    per_image: Optional[Path] = typer.Option(None, "--per-image", help="Write per-image scores to this CSV (with a 'data' column for several datasets)."),
    worst: Optional[tuple[int, Path]] = typer.Option(None, "--worst", help="K DIR: overlay pictures of the K worst images, and DIR/worst.png with up to 12 side by side (DIR/NAME/ per dataset for several).", callback=_range(0, 10**6)),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    device: str = typer.Option("cpu", help="cpu or cuda (ONNX on CUDA needs onnxruntime-gpu; an engine needs cuda)."),
    backend: str = typer.Option("auto", help=BACKEND_HELP),
) -> None:
    """Mean per-image foreground IoU (PortraitNet's 'mIoU') and class-mean IoU of any model, on one or several datasets."""
    from rcr_deploy.benchmarks import peer as peer_mod
    from rcr_deploy.data.folder import sources
    from rcr_deploy.evaluate import SHEET_NAME, evaluate, write_per_image_csv, write_worst
    from rcr_deploy.fileio import check_output
    from rcr_deploy.infer import Segmenter
    from rcr_deploy.runtime import load_runner

    if per_image:
        check_output(per_image, "--per-image")
    if worst and worst[0]:
        check_output(worst[1], "--worst", folder=True)
        check_output(worst[1] / SHEET_NAME, "--worst")

    from rcr_deploy.data.augment import FRAMINGS

    framings = list(FRAMINGS) if framing == "all" else ["reframed"] if reframe else [f.strip() for f in framing.split(",") if f.strip()]
    if not framings or any(f not in FRAMINGS for f in framings):
        raise RcrError(f"--framing {framing}: choose from {', '.join(FRAMINGS)} (comma-separated), or all")
    named = sources([str(d) for d in data])
    if len(named) > 1 and split and Path(split).is_file():
        raise RcrError(f"--split {split}: a file of ids needs a single --data; several datasets use train, val or all")
    rows, pictures = [], {}
    with load_runner(model, device=device, hint="throughput", backend=backend) as runner:
        size = Segmenter(runner, size=size).size  # infer's checks of the artifact and --size, so both accept the same models
        mediapipe = _peer_or_none(peer_mod) if peer else None  # after the model's checks: a refused model loads no peer
        for src, frame in [(src, f) for src in named for f in framings]:
            report = evaluate(runner, src.root, size=size, limit=limit, split=split, batch=batch, framing=frame)
            row = {"name": src.name, **{k: getattr(report, k) for k in ("model", "data", "split", "size", "n_images", "fg_miou", "class_miou")}}
            row["framing"], row["reframed"] = frame, frame == "reframed"
            if mediapipe is not None:
                row["mediapipe_fg_miou"] = peer_mod.fg_miou(mediapipe, src.root, split, limit, frame)[0] / 100
            rows.append((row, report))
            row["label"] = "/".join([src.name] * (len(named) > 1) + [frame] * (len(framings) > 1))
            if worst and worst[0]:
                pictures[row["label"]] = write_worst(report, runner, worst[0], worst[1] / row["label"], split)
        if per_image:
            write_per_image_csv([r for _, r in rows], per_image, names=[row["label"] for row, _ in rows] if len(rows) > 1 else None)
    sheets = {n: str(worst[1] / n / SHEET_NAME) for n, p in pictures.items() if p}
    if as_json:
        out: dict[str, Any] = {"rows": [row for row, _ in rows]}
        if len(rows) == 1:  # one dataset: its fields at the top level too, as before several were allowed
            out = {**{k: v for k, v in rows[0][0].items() if k not in ("name", "reframed", "framing", "label")}, **out}
            out["worst"] = [str(p) for p in pictures.get("", [])]
            out["worst_sheet"] = sheets.get("")
        else:
            out["worst"] = {n: [str(p) for p in ps] for n, ps in pictures.items()}
            out["worst_sheet"] = sheets
        print(json.dumps(out, indent=2))
        return
    if len(rows) == 1:
        row, report = rows[0]
        framed_as = "" if row["framing"] == "as-is" else f", {row['framing']}"
        console.print(f"{report.model} on {report.data} ({report.split or 'all'}{framed_as}, {report.n_images} images, {size}x{size}):")
        console.print(f"  mean per-image foreground IoU (PortraitNet's mIoU): {report.fg_miou * 100:.2f}")
        console.print(f"  class-mean IoU (mean of person and background IoU):  {report.class_miou * 100:.2f}")
        if "mediapipe_fg_miou" in row:
            console.print(f"  MediaPipe selfie segmenter on the same images, foreground IoU: {row['mediapipe_fg_miou'] * 100:.2f}")
    else:
        table = Table(title=f"{rows[0][1].model} at {size}x{size}" + ("" if framings == ["as-is"] else f", framing: {', '.join(framings)}"))
        for col in ("data", "split", "framing", "images", "fg mIoU", "class mIoU") + (("MediaPipe fg mIoU",) if mediapipe else ()):
            table.add_column(col, justify="left" if col in ("data", "split", "framing") else "right")
        for row, report in rows:
            cells = [row["name"], report.split or "all", row["framing"], str(report.n_images), f"{report.fg_miou * 100:.2f}", f"{report.class_miou * 100:.2f}"]
            table.add_row(*cells, *([f"{row['mediapipe_fg_miou'] * 100:.2f}"] if mediapipe else []))
        console.print(table)
    if per_image:
        console.print(f"  per-image scores: {per_image}")
    for name, ps in pictures.items():
        if ps:
            console.print(
                f"  {len(ps)} worst images{' of ' + name if name else ''} as overlays beside {sheets[name]} "
                "(green right, red false person, blue missed)"
            )


def _peer_or_none(peer_mod: Any) -> Any:
    """MediaPipe's selfie segmenter where the 'peer' extra is installed, else None (eval then has no peer column)."""
    from rcr_deploy.errors import BackendUnavailable

    try:
        return peer_mod.SelfieSegmenter()
    except BackendUnavailable:
        return None


# ---- demo


@app.command()
def demo(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (its files are overwritten); default rcr-deploy-out/demo."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Train-form checkpoint; default: the built-in model."),
    size: int = typer.Option(224, help="Input size to export, time and run at (a multiple of 32).", callback=SIZE),
) -> None:
    """The main job in one command, offline: export FP32 + INT8, verify, benchmark, segment an image and a clip, report."""
    from rcr_deploy.benchmarks.report import print_table
    from rcr_deploy.demo import run_demo
    from rcr_deploy.artifact import DEFAULT_OUT_DIR

    result = run_demo(out or DEFAULT_OUT_DIR / "demo", ckpt=model, log=console.print, size=size)
    print_table(result.bench, console)
    for name, s in result.stability.items():
        console.print(
            f"  clip, {name}: consecutive-mask IoU {s['pred_consecutive_iou']:.4f} (ground truth {s['gt_consecutive_iou']:.4f}), "
            f"flicker {s['flicker']:.4f}, foreground IoU {s['fg_iou']:.4f}"
        )
    console.print(f"demo finished in {result.seconds['total']:.0f} s; report: {result.index.resolve()}")


# ---- export


@app.command("export")
def export_cmd(
    ckpt: Optional[Path] = typer.Argument(None, help="Checkpoint (train or deploy form); default: the built-in model."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder; default rcr-deploy-out (bench, eval, infer look there)."),
    precision: str = typer.Option("fp32,fp16", help="Comma list of fp32, fp16, int8 (fp32 is always written). FP16 is in the default so that 'bench --engine fp16' finds its artifact."),
    format: Optional[str] = typer.Option(None, "--format", help=EXPORT_FORMAT_HELP),
    calib: Optional[Path] = typer.Option(None, help="Folder of your images for INT8 calibration (needed for int8)."),
    calib_count: Optional[int] = typer.Option(None, help="Calibration images (first N by name); default 128 minmax, 32 entropy/percentile.", callback=COUNT),
    calib_method: str = typer.Option("minmax", help="INT8 calibration: minmax, entropy or percentile."),
    float_stem: bool = typer.Option(True, "--float-stem/--no-float-stem", help="INT8: keep the convolutions at half the input resolution float (23 % of RCRNet's MACs); they carry the edges of small people."),
    val: Optional[Path] = typer.Option(None, help="Labelled folder (images/ + masks/): mIoU of every precision."),
    val_limit: Optional[int] = typer.Option(None, help="Score only the first N images of --val.", callback=COUNT),
    size: int = typer.Option(224, help="Square input size (multiple of 32).", callback=SIZE),
    dynamic_hw: bool = typer.Option(False, "--dynamic-hw/--no-dynamic-hw", help="Dynamic height/width (multiples of 32) as well as batch."),
    opset: int = typer.Option(18, help="ONNX opset (18 or newer)."),
    arch: Optional[str] = typer.Option(None, help="Architecture of a bare state_dict."),
    engine: bool = typer.Option(False, "--engine/--no-engine", help="Also build a TensorRT engine for every artifact."),
    min_batch: int = typer.Option(1, help="TensorRT profile: smallest batch.", callback=BATCH),
    opt_batch: int = typer.Option(1, help="TensorRT profile: batch to tune for.", callback=BATCH),
    max_batch: int = typer.Option(8, help="TensorRT profile: largest batch (and the Triton repository's max_batch_size).", callback=BATCH),
    force: bool = typer.Option(False, "--force/--no-force", help="Replace the export set in the output folder."),
    triton: Optional[Path] = typer.Option(None, "--triton", help="Also write a Triton model repository of the artifacts (and engines) to this folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Checkpoint -> verified deploy form -> validated ONNX (fp32/fp16/int8) with manifests [-> TensorRT]."""
    from rcr_deploy.exporters import triton as triton_repo
    from rcr_deploy.exporters.pipeline import default_formats, export
    from rcr_deploy.exporters.tensorrt import EngineOptions
    from rcr_deploy.artifact import DEFAULT_OUT_DIR
    from rcr_deploy.fileio import check_output

    check_output(out or DEFAULT_OUT_DIR, "--out", folder=True)
    if triton is not None:
        triton_repo.check_target(triton, force)

    result = export(
        ckpt, out or DEFAULT_OUT_DIR, precision, calib, val,
        arch=arch, size=size, dynamic_hw=dynamic_hw, opset=opset, calib_count=calib_count,
        calib_method=calib_method, float_stem=float_stem, val_limit=val_limit, engine=engine, force=force, progress=not as_json,
        engine_options=EngineOptions(min_batch, opt_batch, max_batch, (size, size)),
        formats=format or default_formats(),
    )
    if triton is not None:
        configs = triton_repo.write_repository(result.out_dir, triton, result.engines, max_batch=max_batch, force=force)
        if not as_json:
            console.print(f"Triton model repository: {triton} ({', '.join(c.parent.name for c in configs)})")
    if as_json:
        print(json.dumps(dataclasses.asdict(result), indent=2, default=str))
        return
    table = Table(title=f"artifacts in {result.out_dir.resolve()}")
    for col in ["file", "MiB", "checked vs", "max abs", "max rel", "same class", ""]:
        table.add_column(col, justify="left" if col in ("file", "checked vs", "") else "right", no_wrap=True)
    stages = {v["stage"]: v for v in result.validation}
    for p, path in result.artifacts.items():
        v = stages[p]
        agreement = "-" if v["mask_agreement"] is None else f"{v['mask_agreement']:.2%}"
        table.add_row(
            path.name, f"{path.stat().st_size / 2**20:.2f}", "torch" if p == "fp32" else "fp32", f"{v['max_abs']:.1e}",
            f"{v['max_rel']:.1e}", agreement, "[green]ok[/]" if v["passed"] else "[red]FAIL[/]",
        )
    console.print(table)
    if result.accuracy:
        acc = Table(title=f"accuracy on {result.accuracy['data']} ({result.accuracy['rows'][0]['n_images']} images)")
        for col in ["precision", "foreground mIoU", "class mIoU", "vs fp32 (fg)"]:
            acc.add_column(col, justify="left" if col == "precision" else "right")
        for r in result.accuracy["rows"]:
            acc.add_row(r["precision"], f"{r['fg_miou']:.4f}", f"{r['class_miou']:.4f}", f"{r['fg_miou_vs_fp32']:+.4f}")
        console.print(acc)
    for name, files in result.formats.items():
        for p, path in files.items():
            v = stages.get(f"{name}-{p}")
            agreement = "-" if v is None or v["mask_agreement"] is None else f"{v['mask_agreement']:.2%}"
            checked = f" (vs {v['reference']}: max abs {v['max_abs']:.1e}, same class {agreement})" if v else ""
            usage = f" ({FORMATS[name].usage.format(path=path)})" if FORMATS[name].usage else ""
            console.print(f"{FORMATS[name].title} ({p}): {path}{checked}{usage}")
    for p, path in result.engines.items():
        console.print(f"TensorRT engine ({p}): {path}")
    console.print(
        f"[green]exported[/] to {result.out_dir.resolve()} in {sum(result.timings.values()):.1f} s "
        f"(torch->ONNX {result.timings['export-onnx']:.1f} s); each artifact's manifest is <artifact>.json"
    )


# ---- build


@app.command("build")
def build_cmd(
    artifact: Optional[Path] = typer.Argument(None, help="ONNX artifact (fp32, fp16 or int8) or export folder; default rcr-deploy-out."),
    min_batch: int = typer.Option(1, help="Optimisation profile: smallest batch.", callback=BATCH),
    opt_batch: int = typer.Option(1, help="Optimisation profile: batch to tune for.", callback=BATCH),
    max_batch: int = typer.Option(8, help="Optimisation profile: largest batch.", callback=BATCH),
    size: int = typer.Option(224, help="H/W for artifacts exported with --dynamic-hw.", callback=SIZE),
    workspace_mib: int = typer.Option(1024, help="TensorRT workspace limit in MiB.", callback=_range(1, 2**20)),
    cache_dir: Optional[Path] = typer.Option(None, help="Engine cache folder; default: engines/ beside the artifact."),
    force: bool = typer.Option(False, "--force/--no-force", help="Rebuild even if the cache holds this engine."),
) -> None:
    """Build (or reuse from the cache) a TensorRT engine and validate it against ONNX Runtime."""
    from rcr_deploy.exporters.tensorrt import EngineOptions, build_engine, require_tensorrt, validate_engine
    from rcr_deploy.artifact import DEFAULT_OUT_DIR, resolve

    require_tensorrt()
    path = resolve(artifact or DEFAULT_OUT_DIR)
    engine = build_engine(path, EngineOptions(min_batch, opt_batch, max_batch, (size, size), workspace_mib), cache_dir, force)
    result = validate_engine(engine, path)
    s = result.summary()
    console.print(f"engine: {engine}\nvs ONNX Runtime: max abs {s['max_abs']:.2e}, max rel {s['max_rel']:.2e} (rtol {s['rtol']})")
    if not result:
        raise VerificationError(f"{engine}: differs from {path.name} on ONNX Runtime beyond tolerance (max rel {s['max_rel']:.2e})")
