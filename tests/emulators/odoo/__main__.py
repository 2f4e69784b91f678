from tests.emulators.odoo.server import serve

serve()
