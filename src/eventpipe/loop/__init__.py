"""The loop ``eventpipe up`` runs: a facade that starts the services (server, runner,
outbox pump, watcher, janitor, fetches, code watcher) in order and stops them in reverse."""
