from tests.emulators.ga4.server import serve

serve()
