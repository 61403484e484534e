"""The official `openai` client against a running bitnet server.

Usage: python openai_client.py BASE_URL MODEL_ID
Exits non-zero (with the failing check) if anything is off.
"""

import sys

import openai
from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    checks += 1


def chat(**kw):
    args = dict(model=model, messages=[{"role": "user", "content": "Tell me a story"}],
                temperature=0, max_tokens=12)
    args.update(kw)
    return client.chat.completions.create(**args)


# Models.
ids = [m.id for m in client.models.list()]
check(ids == [model], f"models.list gives {ids}")

# Chat, not streamed.
r = chat()
c = r.choices[0]
check(r.object == "chat.completion", "object")
check(c.message.role == "assistant" and isinstance(c.message.content, str), "message")
check(c.finish_reason in ("stop", "length"), f"finish_reason {c.finish_reason}")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage sums")
check((c.finish_reason == "length") == (r.usage.completion_tokens == 12), "length iff max_tokens")
text = c.message.content

# Chat, streamed, with usage in the last chunk.
chunks = list(chat(stream=True, stream_options={"include_usage": True}))
streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
check(streamed == text, f"streamed text {streamed!r} != {text!r}")
check(chunks[0].choices[0].delta.role == "assistant", "first chunk has the role")
finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
check(finishes == [c.finish_reason], f"one finish chunk: {finishes}")
check(chunks[-1].usage is not None and chunks[-1].choices == [], "usage chunk last")
check(chunks[-1].usage.completion_tokens == r.usage.completion_tokens, "stream usage")
check(len({ch.id for ch in chunks}) == 1, "one id across chunks")

# max_completion_tokens, the newer name.
r2 = chat(max_tokens=None, max_completion_tokens=3)
check(r2.usage.completion_tokens <= 3, "max_completion_tokens")

# Stop sequences cut the text before them.
if len(text) >= 4:
    stop = text[len(text) // 2: len(text) // 2 + 2]
    r3 = chat(stop=[stop])
    check(r3.choices[0].message.content == text[: text.index(stop)], f"stop {stop!r}")
    check(r3.choices[0].finish_reason == "stop", "stop finish_reason")

# Seeds reproduce sampled text.
a = chat(temperature=1.0, seed=42, max_tokens=16).choices[0].message.content
b = chat(temperature=1.0, seed=42, max_tokens=16).choices[0].message.content
check(a == b, "same seed, same text")

# Log-probabilities.
r4 = chat(logprobs=True, top_logprobs=2, max_tokens=4)
lp = r4.choices[0].logprobs.content
check(len(lp) == r4.usage.completion_tokens, "one logprob per token")
check(all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in lp), "top_logprobs")

# Completions, not streamed and streamed.
cr = client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, temperature=0)
check(cr.object == "text_completion" and cr.usage.completion_tokens <= 6, "completion")
parts = list(client.completions.create(model=model, prompt="Once upon a time", max_tokens=6,
                                       temperature=0, stream=True))
check("".join(p.choices[0].text for p in parts if p.choices) == cr.choices[0].text,
      "streamed completion equals the whole one")

# Errors, as the client raises them.
def raises(exc, fn, what, code=None):
    try:
        fn()
    except exc as e:
        check(code is None or getattr(e, "code", None) == code, f"{what}: code {getattr(e, 'code', None)}")
        return
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"FAILED: {what}: raised {type(e).__name__}: {e}")
    raise SystemExit(f"FAILED: {what}: no error")

raises(openai.NotFoundError, lambda: chat(model="nope"), "unknown model", "model_not_found")
raises(openai.BadRequestError, lambda: chat(n=2), "n = 2")
raises(openai.BadRequestError, lambda: chat(max_tokens=10**9), "huge max_tokens",
       "context_length_exceeded")
raises(openai.BadRequestError, lambda: chat(temperature=3), "temperature 3")
raises(openai.BadRequestError, lambda: chat(messages=[]), "no messages")

print(f"openai {openai.__version__}: {checks} checks passed")
