"""TensorRT engines from ONNX, written against the TensorRT 10/11 Python API. TensorRT cannot be
installed on this project's machines, so nothing here is exercised by CI: every entry point first
checks that `tensorrt` imports and otherwise raises TensorRTUnavailable with the reason.

Precision: TensorRT 10 builds FP16 engines from an FP32 graph with the FP16 builder flag. TensorRT 11
removed that flag: networks are strongly typed and follow the ONNX tensor types, so an FP32 ONNX model
gives an FP32 engine. `precision = "fp16"` is therefore refused there instead of silently building FP32
(and loosening the validation tolerances for nothing). `precision = "int8"` builds from the quantize stage's
Q/DQ model (explicit quantization: the Q/DQ scales are used as they are, no TensorRT calibration): TensorRT 10
with the INT8 flag (and FP16 for what stays float), TensorRT 11 strongly typed, where the Q/DQ nodes alone say
what runs in INT8. The engine's batch dimension follows the ONNX model's: dynamic there, an optimisation profile
here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from otcompress.artifacts import atomic_write_bytes
from otcompress.errors import OTCError

from .base import Runner
from .onnx import load_checked


class TensorRTUnavailable(OTCError):
    pass


def import_tensorrt():
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA install raising at import
        raise TensorRTUnavailable(f"TensorRT is not available: `import tensorrt` failed ({type(e).__name__}: {e}); "
                                  "install the `tensorrt` package (pip install 'otcompress[gpu]') on a machine with an NVIDIA GPU") from None
    return trt


def gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


def onnx_dynamic_batch(onnx_path: str | Path) -> bool:
    dim = load_checked(onnx_path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return not dim.HasField("dim_value")


def build_engine(onnx_path: str | Path, plan_path: str | Path, *, precision: str = "fp32", workspace_gb: float = 4.0,
                 max_batch: int = 64) -> dict:
    trt = import_tensorrt()
    dynamic_batch = onnx_dynamic_batch(onnx_path)
    fp16_flag = hasattr(trt.BuilderFlag, "FP16")
    strongly_typed = not fp16_flag
    if precision == "fp16" and strongly_typed:
        raise OTCError(f"precision = 'fp16': TensorRT {trt.__version__} builds strongly typed networks that follow the "
                       "ONNX types, and this ONNX model is FP32; use precision = 'fp32' (or TensorRT 10)")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        msgs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise OTCError(f"{onnx_path}: TensorRT's ONNX parser rejected it:\n  " + "\n  ".join(msgs))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8" and not strongly_typed:  # a weakly typed network runs Q/DQ in INT8 only with the flag
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
    if dynamic_batch:
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            shape = list(t.shape)
            lo, opt, hi = ([1] + shape[1:]), ([max(1, max_batch // 2)] + shape[1:]), ([max_batch] + shape[1:])
            profile.set_shape(t.name, lo, opt, hi)
        config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise OTCError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    atomic_write_bytes(plan_path, bytes(blob))
    return {"file": Path(plan_path).name, "tensorrt": trt.__version__, "gpu": gpu_name(), "precision": precision,
            "strongly_typed": bool(strongly_typed), "workspace_gb": workspace_gb, "dynamic_batch": dynamic_batch}


class TrtRunner(Runner):
    """Runs a serialized engine with torch CUDA tensors as I/O buffers (TensorRT 10 tensor API)."""

    def __init__(self, plan_path: str | Path, name: str = "tensorrt"):
        super().__init__()
        self.trt = import_tensorrt()
        self.path = Path(plan_path)
        if not self.path.is_file():
            raise OTCError(f"{self.path}: file not found")
        self.name = name
        self._activate()  # the engine declares the input shape and dtype
        self.active = True

    def _activate(self):
        trt = self.trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise OTCError(f"{self.path}: not a TensorRT engine for this TensorRT version/GPU (truncated or built elsewhere)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_shape = [d if d > 0 else "batch" for d in self.engine.get_tensor_shape(self.inputs[0])]
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.inputs[0]))).name
        self.output_names = list(self.outputs)  # the ONNX model's output names

    def _deactivate(self):
        self.context = self.engine = None

    def _infer(self, x, taps):
        import torch

        xin = torch.from_numpy(x).cuda()
        self.context.set_input_shape(self.inputs[0], tuple(x.shape))
        self.context.set_tensor_address(self.inputs[0], xin.data_ptr())
        outs = {}
        for n in self.outputs:
            shape = tuple(self.context.get_tensor_shape(n))
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(n)))
            outs[n] = torch.empty(shape, dtype=getattr(torch, dtype.name), device="cuda")
            self.context.set_tensor_address(n, outs[n].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise OTCError(f"{self.path}: TensorRT execution failed")
        stream.synchronize()
        return {n: v.float().cpu().numpy() for n, v in outs.items()}

    def describe(self):
        return {"name": self.name, "file": self.path.name, "tensorrt": self.trt.__version__, "gpu": gpu_name()}
