#!/usr/bin/env python3
"""Reads Kubernetes YAML for tests/k8s_manifests.rs, which has no YAML parser.

    manifests.py json FILE   prints every document of FILE (a multi-document
                             YAML stream, as `kubectl kustomize` renders it)
                             as one JSON array, empty documents left out.

Exit 0 on success; a file that does not parse exits 1 with the parser's
message on stderr. Needs PyYAML (a dependency of kubernetes-validate).
"""

import json
import sys

try:
    import yaml
except ImportError:
    sys.exit("PyYAML is missing: python3 -m pip install 'kubernetes-validate>=1.34,<2' (scripts/test.sh does)")


def main(argv):
    if len(argv) != 3 or argv[1] != "json":
        sys.exit(__doc__)
    try:
        with open(argv[2], encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        sys.exit(f"{argv[2]}: {e}")
    json.dump(docs, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv)
