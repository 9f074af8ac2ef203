"""Run as a script: `vllm serve <model>` with MLA_PLUGIN_REPLACE_TRITON_MLA=1 and no
--attention-backend, up to the engine spawn, in a process that starts without mla_plugin
loaded, on GPUs made up at the NVML boundary ($MLA_TEST_FAKE_NVML).

    python zero_flag_parent.py MODEL_DIR OUT_DIR

Writes OUT_DIR/parent.json (what it saw), OUT_DIR/auto.pickle and OUT_DIR/triton.pickle
(the engine configs without --attention-backend and with --attention-backend TRITON_MLA, as
vLLM pickles them for its spawned engine process). Then, in the same process, the other
machines: for each, the decision is forgotten, the fake GPUs changed and register() called
again, and vLLM's selection asked once more.
"""

import json
import os
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fake_nvml  # noqa: E402

model_dir, out_dir = sys.argv[1], Path(sys.argv[2])
fake = fake_nvml.install_from_env()
facts = {"mla_plugin_loaded_at_start": "mla_plugin" in sys.modules}

import vllm.plugins  # noqa: E402
from vllm.v1.attention.backends.registry import AttentionBackendEnum  # noqa: E402

vllm.plugins.load_general_plugins()
import mla_plugin  # noqa: E402
from mla_plugin import zero_flag  # noqa: E402

facts["mla_plugin_file"] = mla_plugin.__file__
facts["nvml_init_calls"] = fake.init_calls
facts["triton_mla_path"] = AttentionBackendEnum.TRITON_MLA.get_path()
facts["decision"] = zero_flag.decision().to_dict()

from vllm.engine.arg_utils import EngineArgs  # noqa: E402
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: E402


def engine_config(*extra):
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    args = parser.parse_args(["--model", model_dir, "--load-format", "dummy",
                              "--skip-tokenizer-init", *extra])
    return EngineArgs.from_cli_args(args).create_engine_config()


auto = engine_config()
explicit = engine_config("--attention-backend", "TRITON_MLA")
facts["auto_backend"] = None if auto.attention_config.backend is None else auto.attention_config.backend.name
facts["explicit_backend"] = explicit.attention_config.backend.name
facts["nvml_init_calls_after_configs"] = fake.init_calls  # register() ran again in EngineArgs
(out_dir / "auto.pickle").write_bytes(pickle.dumps(auto))
(out_dir / "triton.pickle").write_bytes(pickle.dumps(explicit))

import cuda_selection  # noqa: E402

facts["capability_seen_by_vllm"] = cuda_selection.capability_seen()
facts["selected"] = cuda_selection.select_mla_backend(auto)
facts["selected_fp8"] = cuda_selection.select_mla_backend(auto, "fp8")
facts["selected_explicit"] = cuda_selection.select_mla_backend(explicit)

# The other machines, in this process: forget, change the GPUs, register again, select.
machines = {"sm90": [fake_nvml.H200], "sm100": [fake_nvml.B200], "sm120": [fake_nvml.RTX_PRO_6000]}
facts["machines"] = {}
for variable in ("1", None):
    for label, gpus in machines.items():
        zero_flag.reset()
        AttentionBackendEnum.TRITON_MLA.clear_override()
        if variable is None:
            os.environ.pop(zero_flag.REPLACE_ENV, None)
        else:
            os.environ[zero_flag.REPLACE_ENV] = variable
        fake.gpus = [(name, tuple(cap)) for name, cap in gpus]
        mla_plugin.register()
        facts["machines"][f"{label} variable={variable}"] = {
            "capability_seen_by_vllm": cuda_selection.capability_seen(),
            "triton_mla_path": AttentionBackendEnum.TRITON_MLA.get_path(),
            "selected": cuda_selection.select_mla_backend(auto),
        }
(out_dir / "parent.json").write_text(json.dumps(facts, indent=1))
