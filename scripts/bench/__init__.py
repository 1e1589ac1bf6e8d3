"""Pieces of the fpx CPU benchmark; scripts/bench_cpu.py is the entry point (options, main flow).

  common.py    progress log and the onnxruntime variants every section compares
  models.py    the one-node MatMul ONNX models, their onnxruntime int4 (MatMulNBits) peers, inputs
  measure.py   machine facts and read bandwidth, onnxruntime timing, the `fpx` command (compile, bench)
  sections.py  the kernel and MiniLM sections: what is measured, in which order, and the numbers kept
  report.py    number formatting, the targets, the printed tables and the JSON document
"""
