# tests/integration/: a real `mlflow server` on PostgreSQL, as on the cluster. The test starts
# its own throwaway PostgreSQL from Debian's server binaries (/usr/lib/postgresql/<ver>/bin);
# this target only makes sure they are installed. Nothing is started here.

.PHONY: postgresql

postgresql: ## PostgreSQL server binaries for the tracking-server tests (apt-get, when missing and allowed)
	@if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
		else echo "install PostgreSQL first: sudo apt-get install postgresql" >&2; exit 1; fi; \
	fi

TEST_DEPS += postgresql
