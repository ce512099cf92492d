"""The calls of `inference.GRPCInferenceService`: health, metadata, inference, and Triton's model
configuration and statistics, on the same models, batchers, limits and metrics as the REST routes.

What REST answers with a status code gRPC answers with the status code that means the same
(`GRPC_CODES`); the message is the same one line. Each call counts in gloro_requests_total and
gloro_request_duration_seconds under its method's path (`/inference.GRPCInferenceService/ModelInfer`),
with the HTTP status its outcome maps to, so one dashboard covers both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from server import package_version
from server.budget import Hold, InFlightBytes
from server.decode import parse_epsilon, tensor_from_bytes, tensor_from_list
from server.errors import BadRequest, GloroError, Unauthorized
from server.grpc_v2.messages import SERVICE, message, methods, parse
from server.metrics import Metrics
from server.middleware import API_KEY_HELP, carries_key
from server import open_inference as protocol
from server.open_inference import OUTPUTS, check_input, check_output_asked, output_tensor
from server.repository import InputSpec
from server.service import ModelService, Models, Prediction

log = logging.getLogger("server.grpc")

# GloroError.status -> the gRPC status code of the same meaning (gRPC's own HTTP mapping, read backwards)
GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# A call its client cancelled, or whose deadline passed, before it was answered (nginx's 499)
CANCELLED_STATUS = 499
# As on REST, the health calls need no API key
PUBLIC_METHODS = frozenset({"ServerLive", "ServerReady"})
# Triton's extensions served over gRPC (REST adds the binary tensor one, which gRPC's raw contents make moot)
EXTENSIONS = ["classification", "model_configuration", "statistics"]


class Call:
    """One call's model (for its metrics) and what it holds of the process's in-flight bytes."""

    __slots__ = ("model", "hold", "queued")

    def __init__(self, budget: InFlightBytes) -> None:
        self.model = ""
        self.hold = Hold(budget)
        self.queued: asyncio.Future | None = None  # its request in the batcher, when it left one behind

    async def answered(self, prediction: Awaitable[Prediction]) -> Prediction:
        """`prediction`, awaited. A call its client cancels (or whose deadline passes) leaves its
        request in the batcher, as a REST client that hangs up does: its input stays counted
        until the batch has answered it, so cancelling frees no budget early."""
        work = asyncio.ensure_future(prediction)
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            self.queued = work
            raise

    def release(self) -> None:
        if self.queued is None or self.queued.done():
            self.hold.release()
        else:
            self.queued.add_done_callback(self._release_after)

    def _release_after(self, work: asyncio.Future) -> None:
        if not work.cancelled():
            work.exception()  # seen: nobody is left to read it
        self.hold.release()


Handler = Callable[[Any, Call], Awaitable[Message]]


class CallFailed(Exception):
    """A call's failure as gRPC answers it: a status code and a one-line message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def parameter_value(parameter: Message) -> Any:
    """An InferParameter's value, whichever of its kinds is set (None when none is)."""
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def input_tensor(request: Any, spec: InputSpec, hold: Hold) -> np.ndarray:
    """The request's one FP32 input, from its raw bytes (tritonclient's way) or from
    `contents.fp32_contents`, counted in the call's `Hold` as REST counts its decoded input."""
    inputs = request.inputs
    check_input([tensor.name for tensor in inputs], inputs[0].datatype if inputs else "")
    tensor = inputs[0]
    shape = list(tensor.shape)
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1:
            raise BadRequest(f"{len(raw)} raw_input_contents for 1 input")
        if tensor.HasField("contents"):
            raise BadRequest("input has both contents and raw_input_contents")
        array = tensor_from_bytes(memoryview(raw[0]), shape, spec)
    elif tensor.HasField("contents"):
        contents = tensor.contents
        others = [field.name for field, _ in contents.ListFields() if field.name != "fp32_contents"]
        if others:
            raise BadRequest(f"input contents in {others[0]}: an FP32 input's values go in fp32_contents")
        array = tensor_from_list(np.asarray(contents.fp32_contents, dtype=np.float32), shape, spec)
    else:
        raise BadRequest("input has neither contents nor raw_input_contents")
    hold.take(array.nbytes, "the decoded input")
    return array


def requested_outputs(request: Any) -> list[tuple[str, int | None]]:
    """(name, top classes asked for or None) of each output asked for, in order; all of them when
    none is named."""
    wanted: dict[str, int | None] = {}
    for output in request.outputs:
        parameters = {key: parameter_value(value) for key, value in output.parameters.items()}
        wanted[output.name] = check_output_asked(output.name, parameters, wanted)
    return list(wanted.items()) or [(name, None) for name in OUTPUTS]


class OpenInferenceService:
    """The service's calls, and the gRPC handler that routes each to its method here."""

    def __init__(self, models: Models, metrics: Metrics, budget: InFlightBytes, api_key: str | None,
                 draining: asyncio.Event) -> None:
        self.models = models
        self.metrics = metrics
        self.budget = budget
        self.key = api_key.encode() if api_key is not None else None
        self.draining = draining  # set when the server begins to stop: streams take no more requests

    def _service(self, name: str, version: str) -> ModelService:
        if not name:
            raise BadRequest(f"no model named: set the request's name; served: {', '.join(self.models.services)}")
        return self.models.version(name, version) if version else self.models.get(name)

    async def server_live(self, request: Any, call: Call) -> Message:
        return message("ServerLiveResponse")(live=True)

    async def server_ready(self, request: Any, call: Call) -> Message:
        return message("ServerReadyResponse")(ready=self.models.ready)

    async def model_ready(self, request: Any, call: Call) -> Message:
        service = self._service(request.name, request.version)
        return message("ModelReadyResponse")(ready=service.ready)

    async def server_metadata(self, request: Any, call: Call) -> Message:
        return message("ServerMetadataResponse")(name="gloro-serve", version=package_version(), extensions=EXTENSIONS)

    async def model_metadata(self, request: Any, call: Call) -> Message:
        metadata = protocol.model_metadata(self._service(request.name, request.version))
        del metadata["parameters"]  # not in the gRPC message
        return message("ModelMetadataResponse")(**metadata)

    async def model_infer(self, request: Any, call: Call) -> Message:
        service = self._service(request.model_name, request.model_version)
        spec = service.spec
        call.model = spec.name  # as on REST, only inference requests count as the model's (its statistics)
        call.hold.take(request.ByteSize(), "the request message")
        inputs = input_tensor(request, spec.manifest.input, call.hold)
        wanted = requested_outputs(request)  # bad asks refused before the model runs
        asked = request.parameters["epsilon"] if "epsilon" in request.parameters else None
        epsilon = parse_epsilon(None if asked is None else parameter_value(asked), spec.epsilon)
        prediction = await call.answered(service.predict(inputs, epsilon))
        response = message("ModelInferResponse")(model_name=spec.name, model_version=spec.version, id=request.id)
        response.parameters["epsilon"].double_param = prediction.epsilon
        for name, classes in wanted:
            tensor = output_tensor(prediction, name, classes)
            response.outputs.add(name=name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(tensor.raw())
        return response

    async def model_config(self, request: Any, call: Call) -> Message:
        service = self._service(request.name, request.version)
        config = json_format.ParseDict(protocol.model_configuration(service), message("ModelConfig")())
        return message("ModelConfigResponse")(config=config)

    async def model_statistics(self, request: Any, call: Call) -> Message:
        """Every model's when the request names none, as Triton answers."""
        if request.name:
            services = [self._service(request.name, request.version)]
        else:
            services = list(self.models.services.values())
        statistics = protocol.model_statistics(self.metrics.current(), services)
        return json_format.ParseDict(statistics, message("ModelStatisticsResponse")())

    def _authorise(self, context: grpc.aio.ServicerContext) -> None:
        if self.key is None:
            return
        metadata = context.invocation_metadata() or ()
        headers = [(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in metadata]
        if not carries_key(headers, self.key):
            raise Unauthorized(f"missing or wrong API key: {API_KEY_HELP} (as gRPC metadata)")

    async def _run(self, route: str, handler: Handler, request: Callable[[], Any],
                   context: grpc.aio.ServicerContext | None) -> Message:
        """One call of `handler` on `request()` (parsed here, so a corrupt message counts): the API key
        checked when `context` is given, its metrics recorded and its bytes given back whatever the
        outcome; a failure raised as CallFailed with the gRPC status and message it answers."""
        started = time.perf_counter()
        call = Call(self.budget)
        status = 500
        try:
            if context is not None:
                self._authorise(context)
            response = await handler(request(), call)
            status = 200
            return response
        except GloroError as exc:
            status = exc.status
            raise CallFailed(GRPC_CODES.get(exc.status, grpc.StatusCode.INTERNAL), str(exc)) from None
        except asyncio.CancelledError:
            status = CANCELLED_STATUS
            raise
        except Exception as exc:
            log.exception("unexpected error in %s", route)
            raise CallFailed(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}") from None
        finally:
            call.release()
            self.metrics.record_request(call.model, route, status, time.perf_counter() - started)

    def _answering(self, method: str, request_class: type[Message],
                   handler: Handler) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Message]]:
        """`handler` as a unary gRPC call (`_run`), a failure answered with its status code."""
        route = f"/{SERVICE}/{method}"
        public = method in PUBLIC_METHODS

        async def answer(data: bytes, context: grpc.aio.ServicerContext) -> Message:
            try:
                return await self._run(route, handler, lambda: parse(request_class, data),
                                       None if public else context)
            except CallFailed as failed:
                await context.abort(failed.code, failed.details)
                raise  # abort raises; this line is never reached

        return answer

    async def model_stream_infer(self, requests: AsyncIterator[bytes],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        """Triton's streaming inference: each request on the stream is a ModelInfer call of its own
        (batched, limited and counted alike, under this method's route), answered on the stream as
        soon as its batch is done, in whatever order they finish. A request that fails is answered
        with `error_message` and its id; the stream goes on. The API key is checked once a stream."""
        route = f"/{SERVICE}/ModelStreamInfer"
        answer = message("ModelStreamInferResponse")
        request_class = message("ModelInferRequest")
        try:
            self._authorise(context)
        except Unauthorized as exc:
            self.metrics.record_request("", route, exc.status, 0.0)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        answers: asyncio.Queue[Message | None] = asyncio.Queue()

        async def one(data: bytes) -> None:
            request_id = ""

            def parsed() -> Any:
                nonlocal request_id
                request = parse(request_class, data)
                request_id = request.id
                return request

            try:
                response = answer(infer_response=await self._run(route, self.model_infer, parsed, None))
            except CallFailed as failed:
                response = answer(error_message=failed.details, infer_response={"id": request_id})
            answers.put_nowait(response)

        running: set[asyncio.Task] = set()

        async def read() -> None:
            async for data in requests:
                task = asyncio.ensure_future(one(data))
                running.add(task)
                task.add_done_callback(running.discard)

        async def serve() -> None:
            """Read until the client closes its side or the server begins to stop (a stream left
            open would hold the stop for its whole grace), then answer what was read, and end."""
            reading, drained = asyncio.ensure_future(read()), asyncio.ensure_future(self.draining.wait())
            try:
                await asyncio.wait({reading, drained}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                reading.cancel()
                drained.cancel()
            if reading.done() and not reading.cancelled():
                reading.exception()  # a stream broken by its client ends here like a closed one
            await asyncio.gather(*running)
            answers.put_nowait(None)

        server = asyncio.ensure_future(serve())
        try:
            while (response := await answers.get()) is not None:
                yield response
        finally:
            server.cancel()  # the client has gone: read no more; calls under way finish as cancelled ones do

    def handler(self) -> grpc.GenericRpcHandler:
        calls: dict[str, Handler] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
            "ModelConfig": self.model_config,
            "ModelStatistics": self.model_statistics,
        }
        protocol_methods = methods()
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._answering(name, request_class, calls[name]),  # bytes in: parsed by `answer`
                response_serializer=response_class.SerializeToString,
            )
            for name, (request_class, response_class) in protocol_methods.items() if name in calls
        }
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.model_stream_infer, response_serializer=protocol_methods["ModelStreamInfer"][1].SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)
