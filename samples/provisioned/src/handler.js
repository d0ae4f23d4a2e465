'use strict';

// Handler "handler.hello": file handler.js at the root of the zip, export "hello".
module.exports.hello = async (event) => {
  return {
    statusCode: 200,
    body: JSON.stringify({ message: 'Hello World from AWS Lambda', input: event }),
  };
};
