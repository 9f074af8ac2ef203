"""Run as a script: a fresh process, like vLLM's spawned engine core, with the same
environment ($MLA_PLUGIN_REPLACE_TRITON_MLA, fake GPUs), unpickles what zero_flag_parent.py
pickled before anything has loaded mla_plugin, then loads the plugins as the engine core
does and asks vLLM's selection with the unpickled configs.

    python zero_flag_child.py OUT_DIR

Writes OUT_DIR/child.json.
"""

import json
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fake_nvml  # noqa: E402

out_dir = Path(sys.argv[1])
fake_nvml.install_from_env()
facts = {"mla_plugin_loaded_at_start": "mla_plugin" in sys.modules}
auto = pickle.loads((out_dir / "auto.pickle").read_bytes())
explicit = pickle.loads((out_dir / "triton.pickle").read_bytes())
facts["mla_plugin_loaded_after_unpickling"] = "mla_plugin" in sys.modules
facts["auto_backend"] = None if auto.attention_config.backend is None else auto.attention_config.backend.name
facts["explicit_backend"] = explicit.attention_config.backend.name

import vllm.plugins  # noqa: E402
from vllm.v1.attention.backends.registry import AttentionBackendEnum  # noqa: E402

facts["triton_mla_path_before_plugins"] = AttentionBackendEnum.TRITON_MLA.get_path()
vllm.plugins.load_general_plugins()
import mla_plugin  # noqa: E402

facts["mla_plugin_file"] = mla_plugin.__file__
facts["triton_mla_path"] = AttentionBackendEnum.TRITON_MLA.get_path()
facts["explicit_is_the_member"] = explicit.attention_config.backend is AttentionBackendEnum.TRITON_MLA

import cuda_selection  # noqa: E402

facts["selected"] = cuda_selection.select_mla_backend(auto)
facts["selected_explicit"] = cuda_selection.select_mla_backend(explicit)
(out_dir / "child.json").write_text(json.dumps(facts, indent=1))
