"""Child process of CompileWorker: stdin (vocabulary, regex) -> stdout (ok, index or error message)."""

import pickle
import resource
import sys


def main() -> None:
    limit = int(sys.argv[1])
    if limit:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    vocab_blob, regex = pickle.loads(sys.stdin.buffer.read())
    from outlines_core import Index

    try:
        result = (True, Index(regex, pickle.loads(vocab_blob)))
    except ValueError as e:
        result = (False, str(e))
    sys.stdout.buffer.write(pickle.dumps(result))


if __name__ == "__main__":
    main()
