"""The framework floor for the HTTP load benchmark: a bare Flask app with one POST endpoint.

    gunicorn -c serving/gunicorn.conf.py 'benchmarks.hello_app:create_app()'

It parses the JSON body and answers a tiny JSON document, nothing else: whatever our API does
beyond this is the cost of validation, online features, the model and the prediction log.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request


def create_app() -> Flask:
    """A Flask app with `POST /hello` (JSON in, tiny JSON out)."""
    app = Flask(__name__)

    @app.post("/hello")
    def hello() -> Response:
        """Parse the body and say how many keys it had."""
        body = request.get_json(force=True)
        return jsonify({"ok": True, "keys": len(body)})

    return app
