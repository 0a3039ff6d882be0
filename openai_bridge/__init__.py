"""The OpenAI bridge: FastAPI that translates the OpenAI REST + SSE API to millm.v1 gRPC."""
