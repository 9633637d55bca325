"""`datamover-api`: serves the Gelato-compatible REST facade against the current kubeconfig, or in-cluster."""

from __future__ import annotations

import argparse
import logging
import os
import ssl

from aiohttp import web

from datamover import kubeapi
from datamover.facade.server import Settings, application


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="datamover-api", description=__doc__)
    parser.add_argument("--address", default=os.environ.get("DATAMOVER_API_ADDRESS") or "0.0.0.0",
                        help="address to listen on; default: $DATAMOVER_API_ADDRESS, else 0.0.0.0")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DATAMOVER_API_PORT") or 0) or None,
                        help="port to listen on; default: $DATAMOVER_API_PORT, else 8443 with TLS and 8080 without")
    parser.add_argument("--tls-cert", default=os.environ.get("DATAMOVER_API_TLS_CERT") or None,
                        help="PEM certificate (chain) to serve HTTPS with; default: $DATAMOVER_API_TLS_CERT")
    parser.add_argument("--tls-key", default=os.environ.get("DATAMOVER_API_TLS_KEY") or None,
                        help="PEM private key of --tls-cert; default: $DATAMOVER_API_TLS_KEY")
    parser.add_argument("--tenant-namespace",
                        default=os.environ.get("DATAMOVER_API_TENANT_NAMESPACE") or Settings.tenant_namespace,
                        help="the namespace of a tenant, with {tenant} standing for the tenantId of the URL, e.g. "
                             "gelato-{tenant}; default: $DATAMOVER_API_TENANT_NAMESPACE, else {tenant}")
    parser.add_argument("--abort-wait-seconds", type=float,
                        default=float(os.environ.get("DATAMOVER_API_ABORT_WAIT_SECONDS")
                                      or Settings.abort_wait_seconds),
                        help="how long an abort waits for the job's final phase before answering with its phase "
                             "then; default: $DATAMOVER_API_ABORT_WAIT_SECONDS, else "
                             f"{Settings.abort_wait_seconds:.0f}")
    args = parser.parse_args(argv)
    if "{tenant}" not in args.tenant_namespace:
        parser.error("--tenant-namespace must contain {tenant}")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.abort_wait_seconds < 0:
        parser.error("--abort-wait-seconds must be 0 or more")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    try:
        kubeapi.shared()  # KUBECONFIG, else ~/.kube/config, else in-cluster
    except kubeapi.ConfigError as error:
        parser.exit(2, f"datamover-api: {error}\n")
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    port = args.port or (8443 if context else 8080)
    app = application(Settings(args.tenant_namespace, args.abort_wait_seconds))
    web.run_app(app, host=args.address, port=port, ssl_context=context, access_log=None, print=None)


if __name__ == "__main__":
    main()
