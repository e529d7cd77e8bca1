#!/usr/bin/env bash
# Installs what the browser tests drive, skipping what is there: Debian's
# Chromium (/usr/bin/chromium; nothing downloads a browser), playwright-core
# from npm (host/tests/browser), and the tracker's build (esbuild) and the
# React package's test dependencies, each pinned by its lock file.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x /usr/bin/chromium ]; then
    echo "browser: chromium present"
else
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "browser: installing chromium (Debian)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium
fi

if [ -d host/tests/browser/node_modules/playwright-core ]; then
    echo "browser: playwright-core present"
else
    echo "browser: installing playwright-core (npm ci)"
    # playwright-core never downloads a browser; this keeps it that way.
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix host/tests/browser --no-audit --no-fund
fi

for dir in host/tracker examples/react-tracker; do
    if [ -d $dir/node_modules/.bin ]; then
        echo "browser: $dir packages present"
    else
        echo "browser: installing $dir packages (npm ci)"
        npm ci --prefix $dir --no-audit --no-fund
    fi
done
