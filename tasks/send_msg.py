"""Example task: the mass-message job. Param: {"sender": uid, "receivers": [uid, ...],
"content": "text"}. Enqueue it with

    Queue().add("send_msg.py", {"sender": 1, "receivers": [2, 3], "content": "Hi!"})

Exit status 0 = done; non-zero = failed (retried with backoff while attempts remain).
"""

import sys

from cronqueue.task import args, attempt


def main() -> int:
    msg = args()
    if not isinstance(msg, dict) or not msg.get("receivers"):
        print("send_msg: param needs a non-empty 'receivers' list", file=sys.stderr)
        return 2
    sender = int(msg["sender"])
    for uid in msg["receivers"]:
        if int(uid) <= 0:
            print(f"send_msg: unknown receiver uid {uid}", file=sys.stderr)
            return 3
        # A real application would write to its inbox table or call its mail service here.
        print(f"uid {sender} -> uid {uid}: {msg.get('content', '')}")
    print(f"sent {len(msg['receivers'])} message(s) on attempt {attempt()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
