"""How the Space treats a request, for every tab of app.py: uploads are checked to be this server's own, the
app's refusals are one sentence for people, and Gradio's own messages (which can quote the request and the
server's paths) are withheld. Handlers are plain functions of (predictor, upload folder, inputs); `bind` fixes
the first two."""

from __future__ import annotations

import functools
import html
import sys
from pathlib import Path

import gradio as gr

UPLOADS_ONLY = "Send the image as a file uploaded to this app; other paths and URLs are refused."
UNPROCESSED = ("This request could not be processed (the server's own message is withheld: it can quote the "
               "request). Send the image as a file uploaded to this app, and age, sex and site as the API page says.")


def withhold_gradio_messages() -> None:
    """Gradio's own checks (a path that was not uploaded, a URL to a private address, a malformed file payload)
    raise before this app's code runs, and their messages quote the request and the server's paths (its working
    directory, its upload folder). Nothing of that reaches the visitor or the log: the reply is one fixed
    sentence, and the log keeps where it failed and the exception's type. The app's own refusals (`gr.Error`)
    are written for people and pass unchanged."""
    import traceback

    import gradio.queueing
    import gradio.utils
    from gradio.exceptions import InvalidPathError

    class Redacted:
        @staticmethod
        def print_exc(*_args, **_kwargs) -> None:
            kind, _, trace = sys.exc_info()
            frames = "".join(traceback.format_tb(trace, limit=-3)) if trace else ""
            print(f"request failed: {getattr(kind, '__name__', kind)} (message withheld: it can quote the "
                  f"request)\n{frames}", file=sys.stderr, end="")

    original = getattr(gradio.utils.error_payload, "original", gradio.utils.error_payload)

    def error_payload(error: BaseException | None, show_error: bool) -> dict:
        if error is None or isinstance(error, gr.Error):
            return original(error, show_error)
        return original(refuse(UPLOADS_ONLY if isinstance(error, InvalidPathError) else UNPROCESSED), show_error)

    error_payload.original = original  # type: ignore[attr-defined]  (a second build_demo does not wrap twice)
    gradio.queueing.traceback = Redacted
    gradio.queueing.error_payload = gradio.utils.error_payload = error_payload


def refuse(message: str) -> gr.Error:
    """A message for the person (printed nowhere: it can quote their input). Gradio 6.31's page titles every
    error toast "Error" whatever `title` says, so the message itself says what to do."""
    return gr.Error(html.escape(message, quote=False), print_exception=False)


def upload_path(image: dict | None, uploads: Path) -> str | None:
    """The path of a file uploaded to this server (examples are copied there too), or None. Events run with
    preprocess=False, so Gradio never opens the upload: `inference.open_image` (format allow-list, pixel
    cap read from the header) is the only parser. Gradio checks only payloads tagged as files, so the
    folder is checked here too."""
    if image is None:
        return None
    path = image.get("path") if isinstance(image, dict) else None
    if not isinstance(path, str) or not Path(path).resolve().is_relative_to(uploads):
        raise refuse(UPLOADS_ONLY)
    return path


def bind(fn, *args):
    """`fn` with its first arguments fixed; Gradio reads the rest of the signature and the docstring."""
    bound = functools.partial(fn, *args)
    bound.__doc__, bound.__name__ = fn.__doc__, fn.__name__
    return bound


