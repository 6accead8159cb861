"""The interlingua service: the model runtime (``service.runtime``, no web dependencies) and the HTTP app."""
