"""Extension objects, created unbound and attached to the app in ``create_app``."""

from flask_jwt_extended import JWTManager
from flask_sock import Sock

jwt = JWTManager()
sock = Sock()
