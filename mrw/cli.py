"""The `mrw` command line. Commands stay thin: parse options, call the library, print.

Errors: every mrw.errors.MrwError becomes one line on stderr and a non-zero exit; Ctrl-C
exits 130 after the command's own cleanup has run (the library restores knobs, stops
engines and leaves valid files on disk before the interrupt reaches here).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from mrw import __version__
from mrw.errors import MrwError

console = Console(stderr=True)
out = Console()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="mrw")
def cli() -> None:
    """Record, replay and measure multi-request LLM workflows (latency and energy)."""


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        console.print("mrw: interrupted", style="red")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("mrw: interrupted; what was measured so far is on disk", style="red")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except MrwError as e:
        console.print(f"mrw: error: {e}", style="red", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)


# ---------------------------------------------------------------------------- traces


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="Print only problems.")
def validate(files: tuple[Path, ...], quiet: bool) -> None:
    """Check trace FILES against the schema and the semantic rules; exit 1 on any problem."""
    from mrw import trace as tr
    from mrw import validate as v
    from mrw.errors import TraceError

    bad = 0
    for f in files:
        try:
            doc = v.migrate(tr.parse(tr.read_bytes(f), str(f)), str(f))
            problems = v.check(doc)
        except TraceError as e:
            problems = [v.Problem("$", str(e).removeprefix(f"{f}: "))]
        if problems:
            bad += 1
            for p in problems:
                click.echo(f"{f}: {p}")
        elif not quiet:
            n = sum(len(w["calls"]) for w in doc["workflows"])
            click.echo(f"{f}: ok ({len(doc['workflows'])} workflows, {n} calls)")
    if bad:
        raise SystemExit(1)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--workflows", "show_workflows", is_flag=True, help="Also list every workflow's shape.")
def info(file: Path, as_json: bool, show_workflows: bool) -> None:
    """Summarise a trace: workflows, calls, DAG depth/width, critical path, tokens, prefix sharing."""
    import orjson

    from mrw.info import trace_info
    from mrw.trace import load

    trace = load(file)
    summary, shapes = trace_info(trace)
    if as_json:
        from dataclasses import asdict

        d = summary.to_dict()
        if show_workflows:
            d["per_workflow"] = [asdict(s) for s in shapes]
        click.echo(orjson.dumps(d, option=orjson.OPT_INDENT_2).decode())
        return
    t = Table(title=f"{file}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    ra = summary.recorded_against
    rows = [
        ("workload", summary.workload),
        ("recorded against", ", ".join(f"{k}={v}" for k, v in ra.items() if v) or "-"),
        ("workflows", f"{summary.workflows}"),
        ("calls", f"{summary.calls} ({summary.calls_per_workflow:.1f} per workflow)"),
        ("DAG depth / width (max)", f"{summary.depth_max} / {summary.width_max}"),
        ("input tokens", f"{summary.input_tokens:,} (mean {summary.mean_input_tokens:,.0f} per call)"),
        ("output tokens", f"{summary.output_tokens:,} (mean {summary.mean_output_tokens:,.0f} per call)"),
        ("tool/think wait", f"{summary.total_wait_s:.2f} s in all"),
        (
            "critical path (mean)",
            f"{summary.critical_path_s_mean:.2f} s" if summary.critical_path_s_mean is not None else "no timings",
        ),
        (
            "shared-prefix share",
            f"{summary.shared_prefix_share:.1%} of prompt blocks (by {summary.shared_prefix_basis})"
            if summary.shared_prefix_share is not None
            else "unknown (no text or hashes)",
        ),
        ("recorded duration", f"{summary.duration_s:.1f} s" if summary.duration_s is not None else "-"),
        ("calls per node", ", ".join(f"{k}: {v}" for k, v in summary.nodes.items())),
    ]
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)
    if show_workflows:
        wt = Table("workflow", "calls", "depth", "width", "critical path s", "makespan s")
        for s in shapes:
            wt.add_row(
                s.id,
                str(s.calls),
                str(s.depth),
                str(s.width),
                f"{s.critical_path_s:.2f}" if s.critical_path_s is not None else "-",
                f"{s.makespan_s:.2f}" if s.makespan_s is not None else "-",
            )
        out.print(wt)


# ---------------------------------------------------------------------------- record (generators)

from mrw.generators.cli import record as _record  # noqa: E402

cli.add_command(_record)


if __name__ == "__main__":
    main()
