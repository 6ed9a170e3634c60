#!/usr/bin/env bash
# Builds the Debian package: target/debian/hermes_<version>-1_<arch>.deb.
# The man page and shell completions come from the release binary itself
# (`hermes man`, `hermes completions bash`), so they always match it; cargo-deb
# (`cargo install --locked cargo-deb`) then packs them with the binary, the
# systemd unit and /etc/hermes/node.toml (a conffile: kept on upgrades).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --bin hermes
release=target/release
"$release/hermes" man | gzip -9n > "$release/hermes.1.gz"
"$release/hermes" completions bash > "$release/hermes.bash"
"$release/hermes" completions zsh > "$release/_hermes"
"$release/hermes" completions fish > "$release/hermes.fish"
cargo deb --no-build --locked "$@"
