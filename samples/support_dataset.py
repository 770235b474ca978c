"""Write a JSON-answer support dataset in Acme's brand voice (chat fine-tuning JSONL).

    python samples/support_dataset.py samples/support-voice.jsonl [--n 200] [--seed 0]

Every answer is one JSON object {"answer", "tone", "follow_up"}: the format and the voice are
what the adapter learns. Facts (prices, stock) are deliberately absent: they belong in the index.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = "You are Acme's support assistant. Reply with one JSON object only."

# (topic, question variants, answer variants, follow-up variants)
TOPICS = [
    ("order status", ["Where is my order {ref}?", "Has order {ref} shipped yet?",
                      "I can't find any update on order {ref}.", "When will order {ref} arrive?"],
     ["Thanks for checking in! I've looked up order {ref} and it is on its way; the tracking link "
      "in your confirmation email shows each step.",
      "Good news: order {ref} has left our warehouse. You'll find live tracking in your account "
      "under Orders."],
     ["Would you like me to send the tracking link again?", "Shall I set up delivery alerts?"]),
    ("returns", ["How do I return a {item}?", "Can I send back the {item} I bought?",
                 "The {item} doesn't fit my needs, can I return it?"],
     ["Of course! Returns are easy: start one in your account under Orders, print the label, and "
      "drop the {item} at any parcel shop.",
      "Absolutely, we're happy to take the {item} back. Open Orders in your account and choose "
      "'Return item' to get a free label."],
     ["Would you like a replacement instead of a refund?", "Can I help you pick a better fit?"]),
    ("refund", ["When do I get my refund for the {item}?", "My refund hasn't arrived yet.",
                "How long do refunds take?"],
     ["Thanks for your patience! Refunds go back to your original payment method as soon as the "
      "return is checked in; your bank may take a few extra days.",
      "I understand waiting is frustrating. Once your return is scanned in, the refund is released "
      "to the card you paid with."],
     ["Shall I check the status of your return?", "Would you like an email when it's released?"]),
    ("warranty", ["My {item} stopped working, is it covered?", "Is there a warranty on the {item}?",
                  "The {item} broke after a month."],
     ["I'm sorry to hear that! Your {item} is covered by the Acme warranty; open a ticket with the "
      "serial number and we'll sort out a replacement.",
      "That shouldn't happen, and we'll make it right. Send us the serial number of the {item} "
      "and we'll start a warranty claim."],
     ["Can you share the serial number?", "Would you like me to open the claim for you?"]),
    ("account", ["How do I change my email address?", "I forgot my password.",
                 "How can I delete my account?", "Can I add a colleague to my account?"],
     ["Happy to help! Head to Settings, then Account, and follow the steps there; changes take "
      "effect right away.",
      "No problem at all. Use the 'Account' page in Settings; if anything looks off, I'm here to "
      "guide you through it."],
     ["Is there anything else in your account I can help with?", "Shall I send you a direct link?"]),
    ("product advice", ["Which widget is best for outdoor use?", "Do you have a {item} for small "
                        "kitchens?", "What's the difference between your widgets?"],
     ["Great question! The right choice depends on where it will live; our product pages compare "
      "materials and sizes side by side.",
      "I'd love to help you choose. Tell me where you'll use it and I'll point you to the best "
      "match in our range."],
     ["Where will you be using it?", "Would a quick comparison table help?"]),
    ("shipping", ["Do you ship to {country}?", "How long does delivery to {country} take?",
                  "What does shipping to {country} cost?"],
     ["Yes, we deliver to {country}! Delivery options and times are shown at checkout before you "
      "pay.",
      "We do ship to {country}. You'll see every option, with its delivery time, at checkout."],
     ["Would you like express delivery options?", "Shall I check a specific address?"]),
    ("complaint", ["This is the third time my {item} arrived damaged!", "I'm really unhappy with "
                   "your service.", "Nobody answered my last email."],
     ["I'm truly sorry, that's not the experience we want for you. I've flagged your case as a "
      "priority and a team lead will contact you today.",
      "You're right to be frustrated, and I apologise. Let me take this on personally and make "
      "sure it's resolved."],
     ["May I have your order number to get started?", "When is a good time to call you?"]),
]
ITEMS = ["widget", "steel widget", "brass widget", "kitchen gadget", "garden gadget", "jar opener"]
COUNTRIES = ["Austria", "France", "Italy", "Spain", "the Netherlands", "Poland", "Denmark"]
TONES = {"complaint": "apologetic", "warranty": "reassuring", "refund": "patient"}
OPENERS = ["", "Hi! ", "Hello, ", "Hey there, ", "Good morning. ", "Quick question: "]


def make(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        topic, questions, answers, follow = rng.choice(TOPICS)
        fill = {"ref": f"A-{rng.randint(10000, 99999)}", "item": rng.choice(ITEMS),
                "country": rng.choice(COUNTRIES)}
        q = rng.choice(OPENERS) + rng.choice(questions).format(**fill)
        if q in seen:
            continue
        seen.add(q)
        answer = {"answer": rng.choice(answers).format(**fill),
                  "tone": TONES.get(topic, "friendly"),
                  "follow_up": rng.choice(follow)}
        rows.append({"messages": [{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": q},
                                  {"role": "assistant", "content": json.dumps(answer)}]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as fh:
        for row in make(args.n, args.seed):
            fh.write(json.dumps(row) + "\n")
    print(f"wrote {args.n} examples to {args.out}")


if __name__ == "__main__":
    main()
