"""The public Python API's implementation; import it from `medseg` (`medseg.segment`, `medseg.classify`, ...).

One small module per job: `segment`, `classify`, `workflow` (run), `train`, `evaluate`. Each imports its heavy
dependencies inside its functions, so `import medseg` stays fast.
"""
