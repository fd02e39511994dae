"""The `rcr-deploy` command line: thin typer commands that parse options and call the library.

Bad input raises `RcrError` and becomes one line on stderr with exit code 2 (a traceback only
with --debug); a failed equivalence check raises `VerificationError`, exit code 1.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from rcr_deploy.errors import RcrError, VerificationError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="RCRNet portrait segmentation from PyTorch training to a measured, deployed engine.",
)
console = Console()
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")) -> None:
    _state["debug"] = debug


def main() -> None:
    """Console-script entry point: maps typed errors to one line and an exit code."""
    try:
        app()
    except (RcrError, VerificationError) as e:
        if _state["debug"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


# ---------------------------------------------------------------------------------------- models


@app.command()
def models(
    size: int = typer.Option(224, help="Square input size for the MAC count."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Every registered variant: parameters (train and deploy form) and MACs beside the paper's."""
    from benchmarks.cost import count_macs_torch, count_params
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
    rtol32: float = typer.Option(1e-4, help="float32: pass if max|a-b| <= atol + rtol * max|ref|."),
    atol32: float = typer.Option(1e-5, help="float32 absolute tolerance."),
    rtol64: float = typer.Option(1e-10, help="float64 relative tolerance."),
    atol64: float = typer.Option(1e-12, help="float64 absolute tolerance."),
    seed: int = typer.Option(0, help="Seed for random weights, BN statistics and inputs."),
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
