"""The Responses API (``/v1/responses``): a second renderer of the engine's reply.

`request` translates a Responses request into the chat request the engine
runs; `events` turns the engine's chat chunks into Responses events and the
``response`` object; `render` writes them (JSON or SSE); `store` keeps
responses for ``previous_response_id`` and the retrieval endpoints.
"""
