"""What every runner's API shares: the parts of a job (images, text, output format) and what a
runner answers (GenerationResult, JobFailure).

Each runner's job type is its API's input, so it is declared with its service
(runners/<runner>.py, e.g. `SD15DepthJob`), from these parts. Both sides import them; they must
stay free of torch. A job is already validated and normalised: images decoded, seed resolved,
output size resolved.
"""

from __future__ import annotations

import base64
import io
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    WithJsonSchema,
)

OutputFormat = Literal["JPEG", "PNG"]

# Abandonable: every job carries `deadline`, the Unix time by which its answer is needed
# (None: no deadline), and `token`, one per request (its samples share it), by which the
# Gateway cancels it when its caller goes away. A runner does not start, and stops, work that
# nobody waits for (runners/deadlines.py). The Gateway sets both (gateway/runner_client.py).


def _image_from_wire(value: Any) -> Any:
    if isinstance(value, str):  # JSON form: base64 PNG
        image = Image.open(io.BytesIO(base64.b64decode(value)))
        image.load()
        return image
    return value


def _image_to_wire(image: Image.Image) -> str:
    buffer = io.BytesIO()
    # Lossless: the runner sees exactly the decoded pixels. The fastest compression: a 2048 px
    # photo encodes in about 380 ms instead of 660 for 13% more bytes (v2 submit waits for it).
    image.save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# A runner started by the Gateway receives jobs pickled (BentoML's local format): the PIL image
# crosses as raw pixels. A runner reached by URL (Kubernetes) receives JSON: base64 PNG.
PILImage = Annotated[
    Image.Image,
    BeforeValidator(_image_from_wire),
    PlainSerializer(_image_to_wire, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]


def _valid_unicode(text: str) -> str:
    """Text a tokenizer can take: no lone UTF-16 surrogate (JSON can carry one, "\\ud800").
    Checked when a runner receives a job, before BentoML batches it with others', so such a
    job is refused alone (the Gateway refuses it earlier still, naming the field)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("holds a lone UTF-16 surrogate; not valid Unicode text") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]


class JobFailure(BaseModel):
    """Why a runner produced no images for one job, in terms of the job, not of HTTP.

    `invalid_input`: the job's input cannot be used (e.g. no face in `field`);
    `blocked`: the safety checker blocked the result; `internal`: the job's pipeline call
    failed on it alone (runners/batching.py), the runner's log says why; `expired`: nobody
    waited for it any more (its deadline passed or its caller went away), so it was not run or
    was stopped (runners/deadlines.py). The Gateway maps each kind to its code.
    """

    kind: Literal["invalid_input", "blocked", "internal", "expired"]
    message: str
    field: str | None = None


class GenerationResult(BaseModel):
    """The encoded images of one job, in sample order, and the compute time they took."""

    # Image bytes cross JSON (a runner reached by URL) as base64.
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    request_id: str
    images: list[bytes]
    seed: int
    inference_time: float
    # Set instead of images when this job failed; the other jobs of a batch are unaffected.
    failure: JobFailure | None = None
    # The prompt the images were generated from, when the runner changed it (prompt upsampling).
    prompt_used: str | None = None
    # True when the model saw only the start of the prompt (flux: T5's token limit).
    prompt_truncated: bool = False
    # Samples in the pipeline call that made this job's images (its own and those batched with
    # it), so the Gateway can report batch sizes.
    batch_size: int = 1

    @classmethod
    def failed(
        cls, job: Any, failure: JobFailure, inference_time: float = 0.0, **fields: Any
    ) -> GenerationResult:
        """No images for `job`, and why."""
        return cls(
            request_id=job.request_id,
            images=[],
            seed=job.seed,
            inference_time=inference_time,
            failure=failure,
            **fields,
        )
