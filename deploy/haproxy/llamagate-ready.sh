#!/bin/sh
# HAProxy's external check of one llamagate replica: ready (exit 0) while it
# reports SERVING for llamagate.v1.LlamaGateService, the service's readiness
# name. HAProxy calls it as: PROXY_ADDR PROXY_PORT SERVER_ADDR SERVER_PORT.
# The probe is grpc_health_probe from its releases, grpc-health-probe when
# built with `go install`.
probe=$(command -v grpc_health_probe || command -v grpc-health-probe) || exit 2
exec "$probe" -addr="$3:$4" -service=llamagate.v1.LlamaGateService -connect-timeout=1s -rpc-timeout=1s
