# The tutorial's stack for bench/server/run: FastAPI on uvicorn, aiohttp for the upstream.
import asyncio, os
import aiohttp
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
UP = os.environ.get("UPSTREAM", "http://127.0.0.1:8090")
app = FastAPI()
session = None

@app.on_event("startup")
async def startup():
    global session
    session = aiohttp.ClientSession()

@app.get("/hello", response_class=PlainTextResponse)
async def hello():
    return "Hello, world!"

@app.get("/json")
async def js():
    return {"message": "Hello, world!", "n": 42, "ok": True}

async def fetch(path):
    async with session.get(UP + path) as r:
        return await r.json()

@app.get("/summary")
async def summary():
    posts, users = await asyncio.gather(fetch("/posts"), fetch("/users"))
    return {"post_count": len(posts), "user_count": len(users)}
