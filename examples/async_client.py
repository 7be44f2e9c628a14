import asyncio
import os
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, HTTPException

from wkr_celery.client import AsyncWKRClient
from wkr_celery.errors import InputError

PORT = int(os.environ.get("WKR_PORT_IN", "8996"))
PORT_OUT = int(os.environ.get("WKR_PORT_OUT", "8998"))


async def main():
    async with AsyncWKRClient(ip="127.0.0.1", port=PORT, port_out=PORT_OUT) as client:
        y = await client.encode(np.ones(512, dtype=np.float32), timeout=10)
        print(y.shape)                                            # (128,)
        xs = np.ones((100, 512), dtype=np.float32)
        ys = await asyncio.gather(*(client.encode(x) for x in xs))  # 100 awaits, one loop
        many = np.ones((1000, 512), dtype=np.float32)
        results = [y async for y in client.encode_many(many, max_inflight=256)]  # input order
        print(len(ys), "gathered,", len(results), "results in order")
        try:
            await asyncio.wait_for(client.encode(xs[0]), timeout=5)  # cancelling withdraws it
        except asyncio.TimeoutError:
            print("no answer within 5 s")


# A FastAPI app that calls the service: `uvicorn async_client:app`
@asynccontextmanager
async def lifespan(app):
    async with AsyncWKRClient(ip="127.0.0.1", port=PORT, port_out=PORT_OUT) as client:
        app.state.wkr = client
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/predict")
async def predict(x: list[float]) -> list[float]:
    try:
        y = await app.state.wkr.encode(np.asarray(x, dtype=np.float32), timeout=10)
    except InputError as exc:  # wrong shape or dtype: the caller's fault
        raise HTTPException(400, str(exc)) from None
    return y.tolist()


if __name__ == "__main__":
    asyncio.run(main())
