from tests.emulators.github.server import serve

serve()
