"""The bottom layer: what every engine and the CLI stand on.

Errors without exit codes (`errors`), the small nn pieces bound engines and trainers share
(`nn`), atomic file writes (`files`), device selection (`device`), resumable checkpoints
(`checkpoint`) and the process-group helpers (`distributed`, `ddp`). Nothing here imports an
engine or the CLI; `tests/test_architecture.py` enforces it.
"""
