import os


def handler(event, context):
    return {"statusCode": 200, "body": f"billing release {os.environ.get('RELEASE')}"}
