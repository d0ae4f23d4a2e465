import os


def handle(event, context):
    # the values arrive as environment variables; never log them
    return {"statusCode": 200, "body": "connected" if os.environ.get("DB_PASSWORD") else "no password"}
