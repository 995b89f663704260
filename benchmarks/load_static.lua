-- POST the same JSON body (WRK_BODY) on every request: the hello floor and /invocations.
wrk.method = "POST"
wrk.body = os.getenv("WRK_BODY")
wrk.headers["Content-Type"] = "application/json"
