"""`depthid predict`: one generation from the shell, against `depthid serve` or any DepthID URL.

    depthid predict sd1.5-controlnet-depth -i image=@room.jpg -i prompt="a cosy cabin" -o out.jpg
    depthid predict instantid -i face_image=@me.jpg -i prompt="photo of a man" --async
    depthid predict flux-depth-pro -i control_image=@room.jpg -i prompt=... -i steps=20 \\
        --url https://depthid.example.com --api-key did_...

`-i field=value` sets a body field: `@path` reads a file (an image field gets its base64);
numbers and booleans are typed by the server's own schema (its /openapi.json), so
`-i seed=42` sends 42 and `-i prompt=42` sends "42". v1 answers with the image(s); `--async`
submits to v2 and shows the job's progress until it is done. The images are written to `-o`
(`out-1.jpg`, `out-2.jpg`... when there are several); the seed and timings are printed. A server
error is shown as the server's own message, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from settings import get_settings

POLL_INTERVAL_S = 0.5
REPEAT_STATUS_S = 10.0
EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png"}


class CliError(Exception):
    """What went wrong, for the person at the shell (no trace)."""


def main(argv: list[str] | None = None, prog: str = "depthid predict") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("model", help="sd1.5-controlnet-depth, instantid, insta-depth, ...")
    parser.add_argument(
        "-i",
        "--input",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a body field; @path reads a file (images: sent as base64)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="where to write the image (default: output.<ext>)"
    )
    settings = get_settings()
    parser.add_argument(
        "--url",
        default=f"http://{settings.host}:{settings.port}",
        help="the server (default: where `depthid serve` listens, %(default)s)",
    )
    parser.add_argument("--api-key", help="sent as x-api-key, when the server has keys on")
    parser.add_argument(
        "--async",
        dest="use_v2",
        action="store_true",
        help="submit to v2 (queued) and show the job's progress",
    )
    parser.add_argument(
        "--timeout", type=float, default=settings.generation_timeout_s + 30, help="seconds"
    )
    args = parser.parse_args(argv)
    headers = {"x-api-key": args.api_key} if args.api_key else {}
    try:
        with httpx.Client(
            base_url=args.url.rstrip("/"), headers=headers, timeout=args.timeout
        ) as http:
            body = build_body(http, args.model, args.input)
            if args.use_v2:
                images, media_type = run_v2(http, args.model, body)
            else:
                images, media_type = run_v1(http, args.model, body)
            for path in write_images(images, media_type, args.output):
                print(f"wrote {path} ({len(path.read_bytes())} bytes)")
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        message = f"error: cannot reach {args.url}: {exc} (is the server running? `make serve`)"
        print(message, file=sys.stderr)
        return 1
    return 0


# --- the request ------------------------------------------------------------------------------


def build_body(http: httpx.Client, model: str, inputs: list[str]) -> dict[str, Any]:
    """The JSON body from `-i field=value` items, typed by the server's schema of `model`."""
    properties = schema_properties(http, model)
    body: dict[str, Any] = {}
    for item in inputs:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise CliError(f"-i {item!r}: write it as FIELD=VALUE (or FIELD=@path for a file)")
        body[field] = field_value(field, value, properties.get(field))
    return body


def schema_properties(http: httpx.Client, model: str) -> dict[str, Any]:
    """The properties of `model`'s request schema, from the server's /openapi.json."""
    spec = check(http.get("/openapi.json")).json()
    operation = spec["paths"].get(f"/v1/{model}", {}).get("post")
    if operation is None:
        served = sorted(path.split("/")[2] for path in spec["paths"] if path.startswith("/v1/"))
        raise CliError(f"unknown model '{model}'; this server serves: {', '.join(served)}")
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]


def field_value(field: str, value: str, schema: dict[str, Any] | None) -> Any:
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CliError(f"{field}: cannot read {path}: {exc.strerror}") from None
        if field.endswith("image"):
            return base64.b64encode(data).decode("ascii")
        return data.decode("utf-8")
    if schema is None:
        return value  # a field the model does not take: the server names it, and ignores it
    types = {schema.get("type")} | {option.get("type") for option in schema.get("anyOf", [])}
    if "string" in types or not types - {None, "null"}:
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value  # sent as it is: the server's 400 names the field and what it wants


def check(response: httpx.Response) -> httpx.Response:
    """`response`, or the server's error message as a CliError."""
    if response.status_code < 400:
        return response
    try:
        message = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:500] or response.reason_phrase
    raise CliError(f"{message} (HTTP {response.status_code})")


def report_ignored(response: httpx.Response) -> None:
    ignored = response.headers.get("x-ignored-fields")
    if ignored:
        print(f"warning: the model ignored these fields: {ignored}", file=sys.stderr)


# --- v1 and v2 ------------------------------------------------------------------------------


def run_v1(http: httpx.Client, model: str, body: dict[str, Any]) -> tuple[list[bytes], str]:
    started = time.perf_counter()
    response = check(http.post(f"/v1/{model}", json=body))
    elapsed = time.perf_counter() - started
    report_ignored(response)
    inference = response.headers.get("x-inference-time", "?")
    print(f"seed {response.headers.get('x-seed')}, inference {inference} s, total {elapsed:.2f} s")
    media_type = response.headers["content-type"].split(";")[0]
    if media_type != "application/json":
        return [response.content], media_type
    images = [base64.b64decode(image) for image in response.json()["images"]]
    return images, "image/jpeg"  # JSON answers carry the model's JPEGs


def run_v2(http: httpx.Client, model: str, body: dict[str, Any]) -> tuple[list[bytes], str]:
    started = time.perf_counter()
    submitted = check(http.post(f"/v2/{model}", json=body))
    report_ignored(submitted)
    job = submitted.json()
    print(f"submitted {job['request_id']}")
    last, last_shown = None, 0.0
    while True:
        status_response = http.get(job["status_url"])
        try:
            status = status_response.json().get("status")
        except (ValueError, AttributeError):
            status = None  # not our JSON (a proxy's error page): the result says why
        elapsed = time.perf_counter() - started
        # Each new status, and a line every REPEAT_STATUS_S while it stays the same.
        if status != last or elapsed - last_shown >= REPEAT_STATUS_S:
            print(f"  {status or f'HTTP {status_response.status_code}'} at {elapsed:.1f} s")
            last, last_shown = status, elapsed
        if status in ("COMPLETED", "FAILED") or status_response.status_code >= 400:
            break
        time.sleep(POLL_INTERVAL_S)
    result = check(http.get(job["response_url"])).json()
    metrics = result["metrics"]
    print(
        f"seed {result['seed']}, queued {metrics['queue_time']:.2f} s, inference "
        f"{metrics['inference_time']:.2f} s, total {time.perf_counter() - started:.2f} s"
    )
    images, media_type = [], "image/jpeg"
    for output in result["output"]:
        if output.startswith(("http://", "https://")):
            image = check(http.get(output))
            images.append(image.content)
            media_type = image.headers["content-type"].split(";")[0]
        else:
            images.append(base64.b64decode(output))  # base64: true
    return images, media_type


def write_images(images: list[bytes], media_type: str, output: Path | None) -> list[Path]:
    """`output` for one image; `<stem>-1<ext>`, `<stem>-2<ext>`... for several."""
    output = output or Path("output" + EXTENSIONS.get(media_type, ".img"))
    if len(images) == 1:
        paths = [output]
    else:
        paths = [
            output.with_name(f"{output.stem}-{n}{output.suffix}") for n in range(1, 1 + len(images))
        ]
    for path, image in zip(paths, images, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image)
    return paths
