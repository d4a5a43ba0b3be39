"""How a run is run: the command line (fit, predict, export), checks before fit, resume, run folders, the
end-of-run summary and crash-safe checkpoint writes.

- `cli`: `CifarCLI` (LightningCLI), `run(args)`, `main(argv)` (train.py); `commands`: predict / export.
- `preflight`: settings checked before any work; `resume`: reading and checking `ckpt_path`.
- `folder`: run folders and `--overwrite`; `log_dir`: logs under `trainer.default_root_dir`.
- `trainer`: `CifarTrainer`; `checkpoint_io`: atomic checkpoint writes; `summary`: the run summary.
- `predict`, `export`: ensembles of trained runs, ONNX / TorchScript export.
"""
