"""An HTTP endpoint that awaits a tavrida call: FastAPI with tavrida.aio.

``GET /world/{param}`` calls ``test_world.world(param=...)`` (the World
service of ``examples/hello_world.py``) and returns its answer: 502 when it
answers with an Error, 504 when it does not answer in time. The service runs
in another process::

    pip install 'tavrida[fastapi]'
    python examples/run_service.py world amqp://guest:guest@127.0.0.1:5672//
    TAVRIDA_URL=amqp://guest:guest@127.0.0.1:5672// uvicorn fastapi_app:app --app-dir examples
    curl http://127.0.0.1:8000/world/hi          # {"param": "world response"}
    curl http://127.0.0.1:8000/world/fail        # 502: world fails (param=fail)

The client is opened and closed with the application (its lifespan), and
one client serves every request: any number of calls may be in flight at once.
"""

import contextlib
import os

from fastapi import FastAPI, HTTPException, Request

from tavrida import aio, discovery, exceptions


def create_app(url):
    """The application, its tavrida client on the broker at ``url``."""
    disc = discovery.LocalDiscovery()
    disc.register_remote_service("test_world", "test_world_exchange")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with aio.RPCClient(url, disc, source="web_app") as cli:
            app.state.tavrida = cli
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/world/{param}")
    async def world(param: str, request: Request):
        cli = request.app.state.tavrida
        try:
            return await cli.test_world.world(param=param).call(timeout=5)
        except exceptions.RemoteError as exc:
            raise HTTPException(status_code=502, detail=exc.remote_message) from None
        except exceptions.CallTimeout:
            raise HTTPException(status_code=504, detail="test_world did not answer") from None

    return app


app = create_app(os.environ.get("TAVRIDA_URL", "amqp://guest:guest@127.0.0.1:5672//"))
