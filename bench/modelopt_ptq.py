"""NVIDIA Model Optimizer's ONNX PTQ of one model, run by bench/int8.py in an interpreter of its own
(`OTC_MODELOPT_PYTHON`): nvidia-modelopt[onnx] pins onnx and onnxruntime releases other than ours.

    $OTC_MODELOPT_PYTHON bench/modelopt_ptq.py FP32.onnx OUT.int8.onnx CALIB.npy

Its defaults (entropy calibration, per-channel weights, Q/DQ where TensorRT fuses), calibrated on the CPU
execution provider; float parts kept in FP32 (its default, FP16, is for TensorRT)."""

import sys

import numpy as np


def main():
    from modelopt.onnx.quantization import quantize

    fp32, out, calib = sys.argv[1:4]
    quantize(fp32, quantize_mode="int8", calibration_data={"input": np.load(calib)}, calibration_eps=["cpu"],
             output_path=out, high_precision_dtype="fp32", log_level="WARNING")


if __name__ == "__main__":
    main()
