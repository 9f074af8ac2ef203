"""`python -m mla_plugin bench`: our decode kernel against vLLM's TRITON_MLA and the device's
own limits. cli (options, the run), grid (shapes), inputs (tensors), kernels (the contenders),
runner (one shape: check, then time), check (error measures), roofline (counting), device
(timers and measured limits), report (table, CSV, JSON, plot)."""
