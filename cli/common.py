"""What every command shares: plain errors instead of tracebacks, and repeated options."""

import functools
import sys
from pathlib import Path

import click
from pydantic import ValidationError

from refund_sorter.config import DEVICES, PRECISIONS, RUNTIMES
from refund_sorter.errors import UserError

device_option = click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="auto picks CUDA when present.",
)
precision_option = click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="auto: fp16 on CUDA; on a CPU int8 when the model's int8 calibration agrees with "
    "fp32 on 99% of photos, else bf16 where the CPU computes it natively, else fp32.",
)
runtime_option = click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default="auto",
    show_default=True,
    envvar="REFUND_SORTER_RUNTIME",
    help="What runs the model on a CPU. auto: OpenVINO where it is installed (PyTorch when "
    "only PyTorch's int8 calibration passes), else PyTorch; a GPU runs PyTorch.",
)
mapping_option = click.option(
    "--mapping",
    type=click.Path(path_type=Path),
    help="JSON {sub: main} for the old flat <index>_<sub>/ layout.",
)


def listen_options(port: int):
    """``--address`` (127.0.0.1 unless told otherwise) and ``--port`` for a server command."""

    def decorate(func):
        func = click.option(
            "--port", default=port, show_default=True, type=click.IntRange(1, 65535), help="Port."
        )(func)
        return click.option(
            "--address",
            default="127.0.0.1",
            show_default=True,
            help="Address to listen on; 0.0.0.0 means every interface (inside a container, say).",
        )(func)

    return decorate


def serve(create_app, what: str, address: str, port: int) -> None:
    """Check the database's schema, build the web application ``create_app(settings)`` and
    serve it with uvicorn until Ctrl+C; ``what`` names it in the line that says where."""
    import uvicorn

    from refund_sorter.config import get_settings
    from refund_sorter.db import check_schema

    settings = get_settings()
    check_schema(settings.database_url)
    app = create_app(settings)
    click.echo(f"{what} on http://{address}:{port}/ (Ctrl+C stops it)", err=True)
    uvicorn.run(app, host=address, port=port, server_header=False, log_level="info")


def friendly(func):
    """Turn operator-fixable errors into one plain line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)
        except ValidationError as exc:
            problems = "; ".join(
                f"REFUND_SORTER_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                for e in exc.errors()
            )
            click.secho(f"error: invalid setting: {problems}", fg="red", err=True)
            sys.exit(1)
        except ModuleNotFoundError as exc:
            if exc.name not in ("torch", "torchvision"):
                raise
            click.secho(
                "error: this command needs the model libraries (PyTorch); install "
                "them with: pip install -c constraints.txt '.[ml]'",
                fg="red",
                err=True,
            )
            sys.exit(1)

    return wrapper
