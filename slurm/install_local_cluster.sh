#!/usr/bin/env bash
# Install the Debian packages the local test cluster needs (root; ~15 s after apt-get update).
# Daemons are started by slurm/local_cluster.sh, never by the package scripts.
set -euo pipefail

packages=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=0
for cmd in slurmctld slurmd sbatch munged slurmdbd mariadbd; do
    command -v "$cmd" >/dev/null || missing=1
done
if [[ $missing -eq 0 ]]; then
    echo "local cluster packages already installed"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "error: run as root (apt-get install ${packages[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}"
