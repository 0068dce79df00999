"""What each model of a run is called in the report and in README's generated tables (one list for both)."""

MODEL_LABELS = {
    "teacher": "teacher",
    "pruned": "pruned, before recovery",
    "quantized": "quantized, calibration only",
    "student": "recovered student",
}
EXPORT_LABELS = {  # the ONNX files evaluate runs in ONNX Runtime (stages export / export_int8_real)
    "teacher_fp32": "teacher, float32 ONNX",
    "student_fp32": "student, float32 ONNX",
    "int8_synthetic": "student, int8 calibrated on the synthetic set (data-free)",
    "int8_real": "student, int8 calibrated on real images (**NOT data-free**)",
}
