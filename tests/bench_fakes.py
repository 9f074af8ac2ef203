"""CPU stand-ins for the bench's contenders: an exact fp32 MLA decode written for these
tests (independent of mla_plugin.reference), wrapped in each contender's signature."""

import torch


def decode_rows(q, kv_cache, row_tables, row_lens, softmax_scale, kv_scale):
    """out [R,H,512] fp32, lse [R,H] fp32: row r attends the first row_lens[r] tokens of
    the pages row_tables[r]."""
    page = kv_cache.shape[1]
    scale = 1.0 if kv_scale is None else float(kv_scale.reshape(-1)[0])
    outs, lses = [], []
    for r in range(q.shape[0]):
        n = int(row_lens[r])
        pages = row_tables[r, : -(-n // page)].long()
        kv = kv_cache.reshape(kv_cache.shape[0], page, -1)[pages].reshape(-1, 576)[:n].float() * scale
        logits = q[r].float() @ kv.T * softmax_scale  # [H, n]
        lse = torch.logsumexp(logits, dim=-1)
        outs.append(torch.softmax(logits, dim=-1) @ kv[:, :512])
        lses.append(lse)
    return torch.stack(outs), torch.stack(lses)


def expand_causal(block_table, seq_lens, query_len):
    tables = block_table.repeat_interleave(query_len, dim=0)
    offsets = torch.arange(1 - query_len, 1, dtype=seq_lens.dtype)
    return tables, (seq_lens.unsqueeze(1) + offsets).flatten()


def reference(q, kv_cache, block_table, seq_lens, *, softmax_scale, kv_scale=None, q_scale=None,
              query_len=1, causal=True):
    tables, lens = expand_causal(block_table, seq_lens, query_len)
    return decode_rows(q, kv_cache, tables, lens, softmax_scale, kv_scale)


def make_ours(corrupt=None, calls=None):
    """An mla_decode with the op's signature; corrupt(out, lse) may spoil its answer."""
    def mla_decode(q, kv_cache, block_table, seq_lens, *, softmax_scale, kv_scale=None, q_scale=None,
                   query_len=1, causal=True, out=None, lse=None, return_lse=False, max_seq_len=None):
        if calls is not None:
            calls.append(dict(softmax_scale=softmax_scale, kv_scale=kv_scale, query_len=query_len,
                              causal=causal, return_lse=return_lse, max_seq_len=max_seq_len))
        o, l = reference(q, kv_cache, block_table, seq_lens, softmax_scale=softmax_scale,
                         kv_scale=kv_scale, query_len=query_len)
        if corrupt is not None:
            corrupt(o, l)
        out.copy_(o)
        lse.copy_(l)
        return (out, lse) if return_lse else out
    return mla_decode


def make_triton(corrupt=None, calls=None):
    """A decode_attention_fwd with vLLM's signature and MLA conventions."""
    def decode_attention_fwd(q, k_buffer, v_buffer, o, lse, req_to_token, b_seq_len, attn_logits,
                             num_kv_splits, sm_scale, page_size=1, logit_cap=0.0, k_scale=None,
                             v_scale=None, is_mla=False):
        if calls is not None:
            calls.append(dict(q=q, k_buffer=k_buffer, v_buffer=v_buffer, o=o, lse=lse,
                              req_to_token=req_to_token, b_seq_len=b_seq_len, attn_logits=attn_logits,
                              num_kv_splits=num_kv_splits, sm_scale=sm_scale, page_size=page_size,
                              k_scale=k_scale, v_scale=v_scale, is_mla=is_mla))
        out, l = decode_rows(q, k_buffer.squeeze(2), req_to_token, b_seq_len, sm_scale, k_scale)
        if corrupt is not None:
            corrupt(out, l)
        o.copy_(out)
        lse.copy_(l)
    return decode_attention_fwd
