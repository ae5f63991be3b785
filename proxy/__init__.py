"""crm-proxy: a TLS-terminating reverse proxy that owns the security headers of a Sage CRM site."""

__version__ = "0.1.0"
