"""The small trace behind the Parrot-vs-vLLM figures in docs/engines.md: a 4-call refine
chain, and a 4-way fan-out sharing a ~470-token system prompt joined after a 0.5 s tool wait.

    python benchmarks/parrot_smoke_trace.py MODEL_DIR OUT.json   # input tokens counted with MODEL_DIR's template
    mrw replay OUT.json --engine vllm --url http://127.0.0.1:8200 --live-refs -o run_vllm
    mrw replay OUT.json --engine parrot --parrot-url http://127.0.0.1:9000 --parrot-proxy-url http://127.0.0.1:9002 -o run_parrot
    mrw analyze run_vllm run_parrot
"""
import sys

from transformers import AutoTokenizer
from mrw.trace import Call, Message, Trace, Workflow, new_header, dump

tok = AutoTokenizer.from_pretrained(sys.argv[1])
SYS = ("You are the support assistant of a large online bookshop. Policies: orders ship within two working days; "
       "returns are accepted within thirty days if the book is unread; e-books cannot be returned once downloaded; "
       "gift cards never expire; customers in the loyalty programme get free shipping on orders above twenty euros; "
       "damaged deliveries are replaced at no cost when reported within a week with a photo. ") * 6
PARTS = ["The river Danube flows through ten countries and four capital cities.",
         "Its delta on the Black Sea is one of the largest wetlands in Europe.",
         "Shipping on the river carries grain, ore and tourists.",
         "Floods in 2002 and 2013 caused great damage along its banks."]
chain, prev = [], None
for i, part in enumerate(PARTS):
    user = [{"text": f"Part {i + 1}: {part}\n"}]
    if prev:
        user = [{"text": "Summary so far: "}, {"ref": prev}, {"text": "\n"}] + user
    user.append({"text": "Write the updated one-paragraph summary."})
    chain.append(Call(f"chain/c{i}", "summarize" if i == 0 else "refine", [prev] if prev else [], 0.0, 0, 24 + 8 * i,
                      messages=[Message("system", [{"text": "You summarise documents."}]), Message("user", user)], output=f"Summary {i}."))
    prev = chain[-1].id
QS = ["Can I return an e-book?", "When will my order ship?", "Do gift cards expire?", "My book arrived damaged, what now?"]
fan = [Call(f"fan/q{i}", "answer", [], 0.0, 0, 32, messages=[Message("system", [{"text": SYS}]), Message("user", [{"text": q}])], output=f"A{i}")
       for i, q in enumerate(QS)]
join_prompt = [{"text": "Merge these answers into one FAQ:\n"}]
for c in fan:
    join_prompt += [{"ref": c.id}, {"text": "\n"}]
fan.append(Call("fan/join", "merge", [c.id for c in fan], 0.5, 0, 40,
                messages=[Message("system", [{"text": "You edit FAQs."}]), Message("user", join_prompt)], output="FAQ"))
t = Trace(new_header("parrot-smoke", generator={"name": "benchmarks/parrot_smoke_trace.py", "params": {}, "seed": 0},
                     recorded_against={"engine": "vllm", "model": "smol"}),
          [Workflow("chain", 0.0, chain), Workflow("fan", 0.0, fan)])
outs = t.recorded_outputs()
for _, c in t.calls():
    c.input_tokens = len(tok.apply_chat_template(c.render_messages(outs), add_generation_prompt=True, tokenize=True)["input_ids"])
dump(t, sys.argv[2])
print({c.id: c.input_tokens for _, c in t.calls()})
