#!/usr/bin/env bash
# Renders a template such as envoy/envoy.yaml: replaces every ${UPPER_SNAKE} placeholder with the value of the
# environment variable of that name. Fails, naming them, if any placeholder has no (or an empty) value.
#   LISTEN_ADDRESS=127.0.0.1 HTTPS_PORT=8443 ... scripts/render-envoy.sh envoy/envoy.yaml out.yaml
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 TEMPLATE OUT" >&2
  exit 2
fi

python3 - "$1" "$2" <<'PY'
import os
import re
import sys

template, out = sys.argv[1], sys.argv[2]
with open(template, encoding="utf-8") as f:
    text = f.read()
pattern = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
missing = sorted({name for name in pattern.findall(text) if not os.environ.get(name)})
if missing:
    sys.exit(f"render-envoy: {template}: no value for {', '.join(missing)}")
rendered = pattern.sub(lambda m: os.environ[m.group(1)], text)
tmp = out + ".tmp"
with open(tmp, "w", encoding="utf-8") as f:
    f.write(rendered)
os.replace(tmp, out)
PY
