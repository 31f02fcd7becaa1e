#!/bin/sh
# Container entrypoint for every Meridian role.
#
# A scaled service (`docker compose up --scale eu-node=5`) starts identical containers, so the
# identity that must differ between members is derived here, unless the service sets it:
#   MERIDIAN_NODE_NAME            <- the container's host name (unique per replica)
#   MERIDIAN_CLUSTER__ADVERTISE   <- the container's address : cluster port (what the region's
#                                    members dial after reading it from the discovery table)
set -e
addr=$(hostname -i 2>/dev/null | awk '{print $1}')
: "${MERIDIAN_NODE_NAME:=$(hostname)}"
: "${MERIDIAN_CLUSTER__ADVERTISE:=${addr:-127.0.0.1}:${MERIDIAN_CLUSTER__PORT:-7100}}"
export MERIDIAN_NODE_NAME MERIDIAN_CLUSTER__ADVERTISE
exec meridian "$@"
